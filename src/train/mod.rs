//! Training: optimizer, schedule, checkpoints and the iteration loop.

mod adam;
pub mod checkpoint;
mod schedule;
mod trainer;

pub use adam::Adam;
pub use checkpoint::CheckpointFiles;
pub use schedule::LrSchedule;
pub use trainer::{OptimConfig, StepMetrics, Trainer, TrainingSet};
