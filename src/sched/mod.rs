//! The scheduler: trials and evaluations run as worker processes on device slots, with
//! heartbeats, stale-worker detection and cancellation. See `supervisor` for the loop.

mod backend;
mod jobs;
mod register;
mod slots;
mod supervisor;
mod worker;

pub use backend::{Backend, Launch, LocalBackend, StopLevel, WorkerEnd, WorkerExit};
pub use jobs::{evaluation_steps, liveness, pid_alive, Job, JobKind, Liveness};
pub use register::register_trials;
pub use slots::{plan_slots, Machine, Slot, SlotDevice};
pub use supervisor::{run_experiment, Experiment, RunOptions, RunSummary, WORKER_CANCELLED};
pub use worker::{run_recorded_trial, WorkerJob};
