//! Where workers run. The scheduler hands a backend a job's worker command and its slot;
//! the backend runs it, asks it to stop when told, and reports how it ended. `local` runs
//! long-lived worker processes on this host, one per slot; `slurm` submits each job with
//! `sbatch` and follows it with `squeue` and `sacct`.

mod local;
mod slurm;

pub use local::LocalBackend;
pub use slurm::{SlurmBackend, SlurmOptions};

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::jobs::Job;

/// How far the run is from stopping; it only ever escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep going.
    Run,
    /// Checkpoint and stop (SIGTERM to workers).
    Graceful,
    /// Stop now (SIGKILL).
    Kill,
}

/// A job to run: the job, the slot it runs on (workers of one slot share a device and
/// threads), the worker program with its arguments (`worker --experiment ...`) and
/// environment, and the job's log file.
#[derive(Debug, Clone)]
pub struct Launch {
    pub job: Job,
    pub slot: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEnd {
    Exited(i32),
    Signaled(i32),
    /// The backend lost track of it (e.g. waiting failed).
    Lost(String),
}

/// A worker's end, for the job `key` it ran.
#[derive(Debug)]
pub struct WorkerExit {
    pub key: usize,
    pub end: WorkerEnd,
}

/// What ties a worker to the dispatcher: the stop level to follow, and where to say how
/// it ended (exactly once).
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// The job's key in the dispatcher.
    pub key: usize,
    pub stop: watch::Receiver<StopLevel>,
    pub exits: mpsc::UnboundedSender<WorkerExit>,
}

impl WorkerLink {
    pub fn ended(self, end: WorkerEnd) {
        // The dispatcher may be gone (its run over): then nobody needs to know.
        let _ = self.exits.send(WorkerExit { key: self.key, end });
    }
}

/// A started (or re-attached) job: how to name its worker, and the backend's own id of
/// the job when it has one (a Slurm job id), recorded with the job's trials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub worker: String,
    pub backend_job: Option<String>,
}

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Starts `launch` (or, when `launch.job.attach` names a job of this backend still
    /// queued or running, follows that job instead). The worker is asked to stop when the
    /// link's stop level escalates, and its end is sent back on it.
    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<Launched>;

    /// Whether a job this backend started (by its id) is still queued or running, so a
    /// new run follows it rather than starting its trials again.
    fn alive(&self, _backend_job: &str) -> Result<bool> {
        Ok(false)
    }

    /// The slots for `jobs` jobs, given those this host offers: a cluster offers its own.
    fn slots(&self, here: Vec<super::slots::Slot>, _jobs: usize) -> Vec<super::slots::Slot> {
        here
    }

    /// Whether its workers run on this host, so that the run may start a CUDA MPS daemon
    /// for slots that share a GPU (`super::mps`).
    fn runs_here(&self) -> bool {
        false
    }
}

/// A job for a serving worker (`ebmlab worker --serve`), one JSON line on its stdin: its
/// log, and its arguments as `ebmlab worker` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeRequest {
    pub log: PathBuf,
    pub args: Vec<String>,
}

/// A serving worker's answer when a job is done, one JSON line on its stdout: the job's
/// exit status (as a one-job worker would exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeReply {
    pub exit: u8,
}

/// The pid to signal a worker by. A missing pid is an error, never 0: `kill(0, ..)` would
/// signal the scheduler's own process group.
fn watched_pid(id: Option<u32>) -> Result<libc::pid_t> {
    match id.map(libc::pid_t::try_from) {
        Some(Ok(pid)) if pid > 0 => Ok(pid),
        _ => anyhow::bail!("the worker has no pid to be watched by (it is gone already)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_without_a_pid_is_an_error_not_pid_0() {
        assert_eq!(watched_pid(Some(4242)).unwrap(), 4242);
        for missing in [None, Some(0), Some(u32::MAX)] {
            assert!(watched_pid(missing).is_err(), "{missing:?}");
        }
    }
}
