//! The scheduler: trials and evaluations run as worker processes on device slots, with
//! heartbeats, stale-worker detection and cancellation. `dispatch` owns the loop; it
//! speaks to a [`Backend`] (where workers run) and tells a [`Reporter`] what happens.

mod backend;
mod dispatch;
mod events;
mod jobs;
mod launch;
mod mps;
mod packs;
mod register;
mod settle;
mod slots;
mod worker;

#[cfg(test)]
mod tests;

pub use backend::{
    Backend, Launch, Launched, LocalBackend, ServeReply, ServeRequest, SlurmBackend, SlurmOptions,
    StopLevel, WorkerEnd, WorkerExit, WorkerLink,
};
pub use dispatch::{
    dispatch, run_experiment, Experiment, JobFailure, RunOptions, RunSummary, StopRequest,
};
pub use events::{EventLog, JobOutcome, Reporter, RunEvent, RunOutcome, StopReason};
pub use jobs::{evaluation_steps, liveness, pid_alive, Job, JobKind, Liveness};
pub use packs::{form_packs, pack_size, training_bytes, Candidate};
pub use register::register_trials;
pub use slots::{plan_slots, Machine, Slot, SlotDevice};
pub use worker::{parse_overrides, WorkerJob};
