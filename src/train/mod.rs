//! Training: optimizer, schedule and the iteration loop.

mod adam;
mod learner;
mod packed;
mod schedule;
mod trainer;

pub use adam::Adam;
pub use learner::Learner;
pub use packed::{pack_shape, PackMember, PackedTrainer};
pub use schedule::LrSchedule;
pub use trainer::{OptimConfig, StepMetrics, Trainer, TrainingSet};
