//! `ebmlab worker`: jobs of a scheduled run, in a process of their own. One job from the
//! command line, or (`--serve`) job after job read from stdin, so that libtorch is loaded
//! and a GPU's context made once per slot rather than once per job.
//!
//! Exit status of a job (see `crate::exit`): 0 when done, 130 when cancelled (checkpoints
//! saved, trials `killed`), 1 when a trial failed (recorded with its reason), 2 when it
//! could not run.

use std::io::{BufRead as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Args, Parser};

use super::cancel_on_signals;
use crate::eval::is_cancelled;
use crate::exit::Exit;
use crate::sched::{ServeReply, ServeRequest, WorkerJob};
use crate::trial::TrialStop;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Serve jobs read from stdin, one JSON request a line, until stdin closes.
    #[arg(long, exclusive = true)]
    serve: bool,
    #[command(flatten)]
    job: Option<JobArgs>,
}

/// One job.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[arg(long, required = true)]
    experiment: String,
    /// The trial; several train together as a pack.
    #[arg(long = "trial", required = true)]
    trials: Vec<String>,
    /// Evaluate the checkpoint at this step instead of training.
    #[arg(long)]
    evaluate: Option<u64>,
    #[arg(long, required = true)]
    runs: PathBuf,
    #[arg(long, required = true, value_parser = super::parse_database)]
    db: crate::store::Database,
    /// `cpu` or `cuda` (the GPU that CUDA_VISIBLE_DEVICES leaves visible).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Evaluate at `train.eval_every` within this job (no evaluation jobs will follow).
    #[arg(long)]
    inline_evaluations: bool,
}

/// A served job's arguments, parsed as the command line would be.
#[derive(Debug, Parser)]
struct ServedJob {
    #[command(flatten)]
    job: JobArgs,
}

pub fn run(args: WorkerArgs) -> Result<ExitCode> {
    let cancel = cancel_on_signals()?;
    if args.serve {
        return serve(&cancel);
    }
    let job = args
        .job
        .context("a worker needs --serve or a job's arguments")?;
    Ok(run_job(job, &cancel).into())
}

/// Runs one job; its outcome as an exit status (errors are printed).
fn run_job(args: JobArgs, cancel: &AtomicBool) -> Exit {
    match try_job(args, cancel) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Error
        }
    }
}

fn try_job(args: JobArgs, cancel: &AtomicBool) -> Result<Exit> {
    let job = WorkerJob {
        experiment: args.experiment,
        trials: args.trials,
        runs: args.runs,
        db: args.db,
        device: args.device,
        threads: args.threads,
        inline_evaluations: args.inline_evaluations,
    };
    if let Some(step) = args.evaluate {
        let mut exit = Exit::Success;
        for (trial, result) in job.trials.iter().zip(job.evaluate(step, cancel)?) {
            match result {
                Ok(s) => println!(
                    "trial {trial} step {step}: success {}/{} = {:.1}%",
                    s.successes,
                    s.episodes,
                    100.0 * s.success_rate
                ),
                Err(e) if is_cancelled(&e) => {
                    eprintln!("trial {trial} step {step}: {e:#}");
                    if exit == Exit::Success {
                        exit = Exit::Cancelled;
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit = Exit::Error;
                }
            }
        }
        return Ok(exit);
    }
    let results = job.train(cancel)?;
    let mut exit = Exit::Success;
    for (trial, result) in job.trials.iter().zip(&results) {
        match result {
            Ok(report) => println!(
                "trial {} completed: success {:.1}%",
                report.trial_id,
                100.0 * report.final_evaluation.success_rate
            ),
            Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
                eprintln!("trial {trial}: {e:#}");
                exit = Exit::Cancelled;
            }
            Err(e) => {
                eprintln!("trial {trial}: error: {e:#}");
                if exit == Exit::Success {
                    exit = Exit::Failed;
                }
            }
        }
    }
    Ok(exit)
}

/// Job after job from stdin; each job's output goes to its log (stdout and stderr are
/// pointed at it), replies go to the stdout the worker was started with. After a cancelled
/// job (the run is stopping) the worker ends.
fn serve(cancel: &AtomicBool) -> Result<ExitCode> {
    // SAFETY: duplicating our own stdout; the new descriptor is owned by `replies`.
    let mut replies = unsafe {
        let fd = libc::dup(std::io::stdout().as_raw_fd());
        anyhow::ensure!(fd >= 0, "duplicating stdout for replies");
        std::fs::File::from_raw_fd(fd)
    };
    let stdin = std::io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading a job request")?;
        let request: ServeRequest =
            serde_json::from_str(&line).with_context(|| format!("not a job request: {line}"))?;
        log_to(&request.log)?;
        eprintln!(
            "worker pid {} job {}: {}",
            std::process::id(),
            n + 1,
            request.args.join(" ")
        );
        let exit = match ServedJob::try_parse_from(
            std::iter::once("worker".to_owned()).chain(request.args),
        ) {
            Ok(served) => run_job(served.job, cancel),
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Error
            }
        };
        std::io::stdout().flush()?;
        let reply = ServeReply { exit: exit.code() };
        writeln!(replies, "{}", serde_json::to_string(&reply)?)?;
        replies.flush()?;
        if exit == Exit::Cancelled || cancel.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Points this process's stdout and stderr at the end of `log`.
fn log_to(log: &std::path::Path) -> Result<()> {
    std::io::stdout().flush()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening job log {}", log.display()))?;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: both descriptors are open; dup2 replaces `target` atomically.
        anyhow::ensure!(
            unsafe { libc::dup2(file.as_raw_fd(), target) } >= 0,
            "redirecting output to {}",
            log.display()
        );
    }
    Ok(())
}
