//! Training: optimizer, schedule and the iteration loop.

mod adam;
mod schedule;
mod trainer;

pub use adam::Adam;
pub use schedule::LrSchedule;
pub use trainer::{OptimConfig, StepMetrics, Trainer, TrainingSet};
