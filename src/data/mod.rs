//! Training data from demonstrations: history windows and the normalizer.

mod normalizer;
mod windows;

pub use normalizer::Normalizer;
pub use windows::{push_window, Windows};
