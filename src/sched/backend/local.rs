//! Worker processes on this host: one long-lived `ebmlab worker --serve` per slot, started
//! for the slot's first job and handed job after job on its stdin, so libtorch is loaded
//! (and a GPU's context made) once per slot, not once per job. Each process is watched by
//! a task of the caller's tokio runtime (a current-thread runtime: the parent-death signal
//! belongs to the spawning thread).

use std::collections::HashMap;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use super::{
    watched_pid, Backend, Launch, Launched, ServeReply, ServeRequest, StopLevel, WorkerEnd,
    WorkerLink,
};

/// A serving worker waiting for a job.
#[derive(Clone)]
struct Idle {
    pid: libc::pid_t,
    jobs: mpsc::UnboundedSender<(Launch, WorkerLink)>,
}

/// Idle serving workers by slot.
type Pool = Arc<Mutex<HashMap<String, Idle>>>;

#[derive(Default)]
pub struct LocalBackend {
    idle: Pool,
}

impl LocalBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a serving worker for `launch`'s slot and the task that watches it.
    fn spawn(&self, launch: &Launch) -> Result<Idle> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("opening worker log {}", launch.log.display()))?;
        let mut command = tokio::process::Command::new(&launch.program);
        command
            .args(["worker", "--serve"])
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.as_std_mut().pre_exec(move || {
                // If the scheduler dies (even by SIGKILL), the worker gets SIGTERM: its job
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
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            anyhow::bail!("the worker's stdin and stdout are not piped");
        };
        let (jobs, queue) = mpsc::unbounded_channel();
        let idle = Idle { pid, jobs };
        let serving = Serving {
            child,
            pid,
            stdin,
            replies: BufReader::new(stdout).lines(),
            me: idle.clone(),
            slot: launch.slot.clone(),
            pool: Arc::clone(&self.idle),
        };
        tokio::spawn(serving.run(queue));
        Ok(idle)
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn runs_here(&self) -> bool {
        true
    }

    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<Launched> {
        anyhow::ensure!(
            launch.job.attach.is_none(),
            "local workers of another run cannot be re-attached"
        );
        let waiting = self.idle.lock().expect("pool lock").remove(&launch.slot);
        let worker = match waiting {
            Some(worker) if !worker.jobs.is_closed() => worker,
            _ => self.spawn(&launch)?,
        };
        let pid = worker.pid;
        worker
            .jobs
            .send((launch, link))
            .map_err(|_| anyhow::anyhow!("worker pid {pid} is gone"))?;
        Ok(Launched {
            worker: format!("pid {pid}"),
            backend_job: None,
        })
    }
}

/// A serving worker and what its watcher needs.
struct Serving {
    child: Child,
    pid: libc::pid_t,
    stdin: ChildStdin,
    replies: tokio::io::Lines<BufReader<ChildStdout>>,
    /// How the pool reaches this worker.
    me: Idle,
    slot: String,
    pool: Pool,
}

/// How a job on a serving worker ended.
enum Served {
    /// It replied; the worker lives on.
    Replied(u8),
    /// The worker process ended (it crashed, or was killed).
    Ended(std::io::Result<ExitStatus>),
}

impl Serving {
    /// Hands the worker its jobs one at a time, until the backend drops its handle (the run
    /// is over), the worker ends, or a job is cancelled (the run is stopping).
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<(Launch, WorkerLink)>) {
        while let Some((launch, link)) = queue.recv().await {
            let request = ServeRequest {
                log: launch.log.clone(),
                args: launch.args.iter().skip(1).cloned().collect(),
            };
            let line = serde_json::to_string(&request).expect("a request serializes") + "\n";
            if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
                let status = self.child.wait().await;
                link.ended(match status {
                    Ok(status) => end_of(status),
                    Err(_) => WorkerEnd::Lost(format!("handing it a job failed: {e}")),
                });
                return;
            }
            let stop = link.stop.clone();
            match self.follow(stop).await {
                Served::Replied(exit) => {
                    let stopping = *link.stop.borrow() > StopLevel::Run;
                    // Back in the pool before the dispatcher hears, which may launch the
                    // slot's next job at once.
                    if !stopping && exit != crate::exit::Exit::Cancelled.code() {
                        let me = self.me.clone();
                        self.pool
                            .lock()
                            .expect("pool lock")
                            .insert(self.slot.clone(), me);
                    }
                    link.ended(WorkerEnd::Exited(i32::from(exit)));
                    if stopping {
                        break;
                    }
                }
                Served::Ended(status) => {
                    link.ended(match status {
                        Ok(status) => end_of(status),
                        Err(e) => WorkerEnd::Lost(e.to_string()),
                    });
                    return;
                }
            }
        }
        // No more jobs: closing stdin ends the worker.
        drop(self.stdin);
        let _ = self.child.wait().await;
    }

    /// Waits for the job's reply, passing on stop requests as signals.
    async fn follow(&mut self, mut stop: tokio::sync::watch::Receiver<StopLevel>) -> Served {
        loop {
            tokio::select! {
                line = self.replies.next_line() => {
                    match line.ok().flatten().and_then(|l| serde_json::from_str::<ServeReply>(&l).ok()) {
                        Some(reply) => return Served::Replied(reply.exit),
                        None => return Served::Ended(self.child.wait().await),
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The dispatcher is gone: nothing more will be asked.
                        return Served::Ended(self.child.wait().await);
                    }
                    let level = *stop.borrow_and_update();
                    match level {
                        StopLevel::Run => {}
                        // SAFETY: signalling our own child by its (non-zero) pid.
                        StopLevel::Graceful => unsafe {
                            libc::kill(self.pid, libc::SIGTERM);
                        },
                        StopLevel::Kill => {
                            let _ = self.child.start_kill();
                        }
                    }
                }
            }
        }
    }
}

fn end_of(status: ExitStatus) -> WorkerEnd {
    match (status.code(), status.signal()) {
        (Some(code), _) => WorkerEnd::Exited(code),
        (None, Some(signal)) => WorkerEnd::Signaled(signal),
        (None, None) => WorkerEnd::Lost(format!("{status}")),
    }
}
