//! Jobs on a Slurm cluster: each job is a batch script submitted with `sbatch` (the same
//! worker command a local slot runs, once), followed with `squeue` while it is queued or
//! running and read back from `sacct` when it is over. A run's stop is `scancel` (Slurm
//! sends SIGTERM, then SIGKILL after its KillWait: a worker checkpoints on the first);
//! a requeued or preempted job (submitted with `--requeue`) comes back to the queue under
//! the same id and its worker continues the trials from their checkpoints.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Backend, Launch, Launched, StopLevel, WorkerEnd, WorkerLink};
use crate::sched::slots::{Slot, SlotDevice};
use crate::spec::SlurmSpec;

/// How jobs are submitted.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub spec: SlurmSpec,
    /// Seconds between looks at a job (`EBMLAB_SLURM_POLL_SECONDS`, default 2).
    pub poll: Option<Duration>,
}

pub struct SlurmBackend {
    options: SlurmOptions,
}

impl SlurmBackend {
    pub fn new(options: SlurmOptions) -> Result<Self> {
        let found = Command::new("sbatch").arg("--version").output();
        match found {
            Ok(out) if out.status.success() => Ok(Self { options }),
            Ok(out) => bail!(
                "sbatch --version failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => bail!("--backend slurm: sbatch not found ({e}); is Slurm installed here?"),
        }
    }

    fn poll(&self) -> Duration {
        self.options.poll.unwrap_or_else(|| {
            let seconds = std::env::var("EBMLAB_SLURM_POLL_SECONDS")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .unwrap_or(2.0);
            Duration::from_secs_f64(seconds)
        })
    }

    /// The batch script of a job: its `sbatch` options, a check that the runs folder is
    /// visible on the node, then the worker.
    fn script(&self, launch: &Launch) -> Result<String> {
        let o = &self.options.spec;
        let name: String = format!("ebmlab-{}", launch.job.lead())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect();
        let mut lines = vec![
            "#!/bin/sh".to_owned(),
            format!("#SBATCH --job-name={name}"),
            format!("#SBATCH --output={}", launch.log.display()),
            "#SBATCH --open-mode=append".to_owned(),
            "#SBATCH --requeue".to_owned(),
            "#SBATCH --ntasks=1".to_owned(),
        ];
        let cpus = match (
            o.cpus,
            launch.env.iter().find(|(k, _)| k == "OMP_NUM_THREADS"),
        ) {
            (0, Some((_, threads))) => threads.parse().unwrap_or(1),
            (0, None) => 1,
            (n, _) => n,
        };
        lines.push(format!("#SBATCH --cpus-per-task={cpus}"));
        for (flag, value) in [
            ("partition", &o.partition),
            ("account", &o.account),
            ("time", &o.time_limit),
            ("mem", &o.mem),
        ] {
            if !value.is_empty() {
                lines.push(format!("#SBATCH --{flag}={value}"));
            }
        }
        if o.gpus > 0 {
            lines.push(format!("#SBATCH --gres=gpu:{}", o.gpus));
        }
        lines.extend(o.extra.iter().map(|e| format!("#SBATCH {e}")));
        let trial_dir = launch
            .log
            .parent()
            .context("a job's log lies in its trial folder")?;
        lines.push(format!(
            "test -d {dir} || {{ echo \"{dir} is not visible on $(hostname): the runs folder \
             must be on a filesystem the submitting host shares with the nodes\" >&2; exit 2; }}",
            dir = shell_quote(&trial_dir.display().to_string())
        ));
        // Slurm gives the job its GPUs through CUDA_VISIBLE_DEVICES: the slot's is not used.
        let env: Vec<String> = launch
            .env
            .iter()
            .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES")
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        let command: Vec<String> = std::iter::once(launch.program.display().to_string())
            .chain(launch.args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect();
        lines.push(format!("exec env {} {}", env.join(" "), command.join(" ")));
        Ok(lines.join("\n") + "\n")
    }

    fn submit(&self, launch: &Launch, key: usize) -> Result<String> {
        let dir = launch
            .log
            .parent()
            .context("a job's log lies in its trial folder")?;
        let path = dir.join(format!("slurm_job_{key}_{}.sh", std::process::id()));
        std::fs::write(&path, self.script(launch)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let out = Command::new("sbatch")
            .args(["--parsable"])
            .arg(&path)
            .output()
            .context("running sbatch")?;
        if !out.status.success() {
            bail!(
                "sbatch {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        if id.is_empty() {
            bail!("sbatch {} printed no job id", path.display());
        }
        Ok(id)
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<Launched> {
        let id = match &launch.job.attach {
            Some(id) => id.clone(),
            None => self.submit(&launch, link.key)?,
        };
        let poll = self.poll();
        let job = id.clone();
        tokio::spawn(async move {
            let end = follow(&job, poll, link.stop.clone()).await;
            link.ended(end);
        });
        Ok(Launched {
            worker: format!("slurm job {id}"),
            backend_job: Some(id),
        })
    }

    fn alive(&self, backend_job: &str) -> Result<bool> {
        Ok(queued_state(backend_job)?.is_some())
    }

    /// A slot per job: Slurm queues them all and decides where they run.
    fn slots(&self, _here: Vec<Slot>, jobs: usize) -> Vec<Slot> {
        let device = if self.options.spec.gpus > 0 {
            SlotDevice::Cuda {
                visible: String::new(),
            }
        } else {
            SlotDevice::Cpu
        };
        let threads = self.options.spec.cpus.max(1) as usize;
        (0..jobs.max(1))
            .map(|index| Slot {
                index,
                device: device.clone(),
                threads,
            })
            .collect()
    }
}

/// Follows a job to its end, passing the run's stop requests on with `scancel`.
async fn follow(
    job: &str,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<StopLevel>,
) -> WorkerEnd {
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return WorkerEnd::Lost("the scheduler stopped following".into());
                }
                let level = *stop.borrow_and_update();
                let signal = match level {
                    StopLevel::Run => continue,
                    // Slurm's own termination: SIGTERM now, SIGKILL after KillWait.
                    StopLevel::Graceful => None,
                    StopLevel::Kill => Some("KILL"),
                };
                if let Err(e) = cancel(job, signal) {
                    tracing::warn!("scancel {job}: {e:#}");
                }
                continue;
            }
        }
        let id = job.to_owned();
        let looked = tokio::task::spawn_blocking(move || -> Result<Look> {
            if queued_state(&id)?.is_some() {
                return Ok(Look::Queued);
            }
            Ok(accounted_end(&id)?.map_or(Look::Unrecorded, Look::Ended))
        })
        .await;
        match looked {
            Ok(Ok(Look::Ended(end))) => return end,
            Ok(Ok(Look::Queued)) => misses = 0,
            // Accounting records a job a moment after it leaves the queue; a job that
            // never shows up again (or tools that keep failing) is lost.
            Ok(Ok(Look::Unrecorded)) | Ok(Err(_)) if misses < 30 => misses += 1,
            Ok(Ok(Look::Unrecorded)) => {
                return WorkerEnd::Lost(format!(
                    "job {job} left the queue and sacct has no record of how it ended"
                ))
            }
            Ok(Err(e)) => return WorkerEnd::Lost(format!("following job {job} failed: {e:#}")),
            Err(e) => return WorkerEnd::Lost(format!("following job {job} failed: {e}")),
        }
    }
}

/// What one look at a job found.
enum Look {
    Queued,
    Ended(WorkerEnd),
    /// Out of the queue, not yet in the accounting.
    Unrecorded,
}

/// `scancel` of a job (with `signal`, or Slurm's default termination).
fn cancel(job: &str, signal: Option<&str>) -> Result<()> {
    let mut command = Command::new("scancel");
    if let Some(signal) = signal {
        command.arg(format!("--signal={signal}"));
    }
    let out = command.arg(job).output().context("running scancel")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The state `squeue` shows for a job still in the queue (pending, running, requeued...);
/// `None` once it has left it.
fn queued_state(job: &str) -> Result<Option<String>> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%T", "-j", job])
        .output()
        .context("running squeue")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let state = text.lines().next().map(str::trim).filter(|s| !s.is_empty());
    // squeue fails for a job id it no longer knows: gone from the queue.
    Ok(state.map(str::to_owned))
}

/// How an ended job ended, from `sacct`; `None` while accounting has no final record yet.
fn accounted_end(job: &str) -> Result<Option<WorkerEnd>> {
    let out = Command::new("sacct")
        .args(["-n", "-X", "-P", "-o", "State,ExitCode", "-j", job])
        .output()
        .context("running sacct")?;
    if !out.status.success() {
        bail!("sacct: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Ok(None);
    };
    Ok(end_of(line))
}

/// A `State|ExitCode` line of `sacct -P` as a worker's end; `None` for a state that is not
/// final (the record may lag the queue).
fn end_of(line: &str) -> Option<WorkerEnd> {
    let (state, exit) = line.split_once('|')?;
    let state = state.split_whitespace().next().unwrap_or_default();
    let (code, signal) = exit.split_once(':').unwrap_or((exit, "0"));
    let code: i32 = code.trim().parse().unwrap_or(0);
    let signal: i32 = signal.trim().parse().unwrap_or(0);
    Some(match state {
        "COMPLETED" => WorkerEnd::Exited(code),
        "FAILED" if signal > 0 => WorkerEnd::Signaled(signal),
        "FAILED" => WorkerEnd::Exited(code),
        // Cancelled: the worker's own exit (130 after it checkpointed), else the signal.
        "CANCELLED" if code > 0 => WorkerEnd::Exited(code),
        "CANCELLED" => WorkerEnd::Signaled(if signal > 0 { signal } else { 15 }),
        "PENDING" | "RUNNING" | "REQUEUED" | "RESIZING" | "SUSPENDED" | "REQUEUE_HOLD"
        | "REQUEUE_FED" => return None,
        other => WorkerEnd::Lost(format!("Slurm says the job ended {other} ({exit})")),
    })
}

/// A word for `/bin/sh`, quoted when it needs to be.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sacct_lines_say_how_a_job_ended() {
        assert_eq!(end_of("COMPLETED|0:0"), Some(WorkerEnd::Exited(0)));
        assert_eq!(end_of("FAILED|1:0"), Some(WorkerEnd::Exited(1)));
        assert_eq!(end_of("FAILED|0:9"), Some(WorkerEnd::Signaled(9)));
        assert_eq!(end_of("CANCELLED by 0|130:0"), Some(WorkerEnd::Exited(130)));
        assert_eq!(end_of("CANCELLED by 0|0:15"), Some(WorkerEnd::Signaled(15)));
        assert_eq!(end_of("RUNNING|0:0"), None);
        assert!(matches!(end_of("TIMEOUT|0:0"), Some(WorkerEnd::Lost(r)) if r.contains("TIMEOUT")));
        assert_eq!(shell_quote("/runs/a b"), "'/runs/a b'");
        assert_eq!(shell_quote("--db=x"), "--db=x");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
