//! Where workers run. The scheduler hands a backend a worker command and a slot; the
//! backend starts it, asks it to stop when told, and reports how it ended. `local` runs
//! child processes on this host; a Slurm backend would submit the same command with
//! `sbatch` and watch the job.

use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result};
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

/// A worker to start: the job it runs, the program, its arguments and environment, and
/// its log file.
#[derive(Debug, Clone)]
pub struct Launch {
    pub job: Job,
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

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Starts `launch` and returns how to name the worker (`pid N` here). The worker is
    /// asked to stop when the link's stop level escalates, and its end is sent back on it.
    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<String>;
}

/// Worker processes on this host, supervised by tasks of the caller's tokio runtime (a
/// current-thread runtime: the parent-death signal below belongs to the spawning thread).
pub struct LocalBackend;

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<String> {
        let mut stop = link.stop.clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("opening worker log {}", launch.log.display()))?;
        let mut command = tokio::process::Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.as_std_mut().pre_exec(move || {
                // If the scheduler dies (even by SIGKILL), the worker gets SIGTERM: it
                // saves a checkpoint and records itself `killed`.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))?;
        let pid = watched_pid(child.id())
            .with_context(|| format!("starting {}", launch.program.display()))?;
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    changed = stop.changed() => {
                        if changed.is_err() {
                            // The scheduler is gone: nothing more will be asked.
                            break child.wait().await;
                        }
                        let level = *stop.borrow_and_update();
                        match level {
                            StopLevel::Run => {}
                            StopLevel::Graceful => {
                                // SAFETY: signalling our own child by its (non-zero) pid.
                                unsafe { libc::kill(pid, libc::SIGTERM) };
                            }
                            StopLevel::Kill => {
                                let _ = child.start_kill();
                            }
                        }
                    }
                }
            };
            let end = match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => WorkerEnd::Exited(code),
                    (None, Some(signal)) => WorkerEnd::Signaled(signal),
                    (None, None) => WorkerEnd::Lost(format!("{status}")),
                },
                Err(e) => WorkerEnd::Lost(e.to_string()),
            };
            link.ended(end);
        });
        Ok(format!("pid {pid}"))
    }
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
