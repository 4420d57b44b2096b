//! Demonstration data: the seed's JSON trajectory files, their generation and validation.

mod demo_file;
mod generate;
mod normalizer;
mod validate;
mod windows;

pub use demo_file::{
    demo_file_name, demo_files, parse_demo, read_demo, write_demo, DemoFileError, ParticleDemo,
};
pub use generate::{record_oracle_demos, write_demos, RecordedDemo};
pub use normalizer::Normalizer;
pub use validate::{replay_demo, validate_dir, InvalidFile, Replay, ValidationReport};
pub use windows::{demo_observation, push_window, Windows};
