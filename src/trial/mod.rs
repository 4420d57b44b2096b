//! One trial end to end: demos -> windows and normalizer -> training with periodic
//! checkpoints and evaluations -> final evaluation. A library function with no global
//! state beyond libtorch's generator (one trial per process), so the orchestrator can run
//! many of them as worker processes. The [`TrialRecorder`] writes what a trial produces
//! into the results store.

mod evaluate;
mod metrics;
mod observer;
mod paths;
mod recorder;
mod run;
mod setup;

pub use evaluate::{evaluate_actor, evaluate_pack};
pub use metrics::logged_seconds;
pub use observer::{NoObserver, TrialObserver};
pub use paths::TrialPaths;
pub use recorder::{
    evaluation_rows, heartbeat_interval, run_recorded_pack, run_recorded_trial, RecordedTrial,
    TrialRecorder,
};
pub use run::{completed_report, run_pack, run_trial};
pub use setup::{
    build_learner, evaluation_pack_key, load_demos, pack_key, training_precision, training_set,
    trial_member,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::eval::EvalSummary;

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub wall_seconds: f64,
    pub lr: f64,
    pub loss: f64,
    pub info_nce: f64,
    pub grad_penalty: f64,
    pub energy_positive: f64,
    pub energy_negative: f64,
    pub grad_norm: f64,
    pub iterations_per_second: f64,
}

/// What a finished trial reports (also written as `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialReport {
    pub experiment: String,
    pub trial_id: String,
    pub dir: PathBuf,
    pub policy: String,
    pub iterations: u64,
    pub resumed_from: Option<u64>,
    pub train_seconds: f64,
    pub iterations_per_second: f64,
    pub final_evaluation: EvalSummary,
}

/// How a trial stopped short.
#[derive(Debug, thiserror::Error)]
pub enum TrialStop {
    /// Stopped on request; it continues from `checkpoint` (the step it stopped at, saved
    /// then; or, stopped in an evaluation, the last one before it).
    #[error("cancelled at step {step}; {}", match checkpoint {
        Some(saved) if saved == step => "checkpoint saved".to_owned(),
        Some(saved) => format!("in its evaluation; it continues from its checkpoint of step {saved}"),
        None => "in its evaluation; it starts again (no checkpoint was saved before)".to_owned(),
    })]
    Cancelled { step: u64, checkpoint: Option<u64> },
    #[error("loss became {value} at step {step}; {}", match last_good {
        Some(good) => format!("the last good checkpoint is step {good}"),
        None => "no checkpoint was saved before".to_owned(),
    })]
    NonFiniteLoss {
        step: u64,
        value: f64,
        last_good: Option<u64>,
    },
}

/// Settings of a run that do not change what a trial computes.
#[derive(Debug, Clone, Default)]
pub struct TrialOptions {
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Leave the periodic evaluations (`train.eval_every`) to separate evaluation jobs:
    /// the trial keeps a checkpoint at each evaluation step instead of evaluating.
    pub defer_evaluations: bool,
}
