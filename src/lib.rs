//! ebmlab: implicit behavioral cloning (energy-based policies) on IBC's N-D particle task.
//!
//! The binary's verbs live in [`cli`]; everything they do is a library call, so tests and
//! the orchestrator use the same code.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod eval;
pub mod exit;
pub mod plot;
pub mod policy;
pub mod report;
pub mod sched;
pub mod spec;
pub mod store;
pub mod task;
pub mod train;
pub mod trial;
