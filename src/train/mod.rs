//! Training: optimizer, schedule and the iteration loop.

mod adam;
mod foreach;
mod learner;
mod packed;
mod schedule;
mod step;
mod step_graph;
mod trainer;
mod transfer;

pub use adam::Adam;
pub use learner::Learner;
pub use packed::{pack_shape, PackMember, PackedTrainer};
pub use schedule::LrSchedule;
pub use step::{QueuedStep, StepMetrics};
pub use trainer::{OptimConfig, Trainer, TrainingSet};
