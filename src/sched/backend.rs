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

/// A worker to start: the program, its arguments and environment, and its log file.
#[derive(Debug, Clone)]
pub struct Launch {
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

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Starts `launch` for job `key` and returns an id of the worker (a pid here). The
    /// worker is asked to stop when `stop` escalates; its end is sent on `exits`.
    fn launch(
        &self,
        key: usize,
        launch: Launch,
        stop: watch::Receiver<StopLevel>,
        exits: mpsc::UnboundedSender<WorkerExit>,
    ) -> Result<u32>;
}

/// Worker processes on this host, supervised by tasks of the caller's tokio runtime (a
/// current-thread runtime: the parent-death signal below belongs to the spawning thread).
pub struct LocalBackend;

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn launch(
        &self,
        key: usize,
        launch: Launch,
        mut stop: watch::Receiver<StopLevel>,
        exits: mpsc::UnboundedSender<WorkerExit>,
    ) -> Result<u32> {
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
        let pid = child.id().unwrap_or_default();
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
                                // SAFETY: signalling our own child by its pid.
                                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
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
            let _ = exits.send(WorkerExit { key, end });
        });
        Ok(pid)
    }
}
