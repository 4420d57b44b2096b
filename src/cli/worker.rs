//! `ebmlab worker`: one job of a scheduled run, in its own process. Exit status (see
//! `crate::exit`): 0 when done, 130 when cancelled (checkpoint saved, trial `killed`), 1
//! when the trial failed (recorded with its reason), 2 when it could not start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::cancel_on_signals;
use crate::exit::Exit;
use crate::sched::WorkerJob;
use crate::trial::TrialStop;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    experiment: String,
    #[arg(long)]
    trial: String,
    /// Evaluate the checkpoint at this step instead of training.
    #[arg(long)]
    evaluate: Option<u64>,
    #[arg(long)]
    runs: PathBuf,
    #[arg(long)]
    db: PathBuf,
    /// `cpu` or `cuda` (the GPU that CUDA_VISIBLE_DEVICES leaves visible).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: WorkerArgs) -> Result<ExitCode> {
    let job = WorkerJob {
        experiment: args.experiment,
        trial: args.trial,
        runs: args.runs,
        db: args.db,
        device: args.device,
        threads: args.threads,
    };
    if let Some(step) = args.evaluate {
        let s = job.evaluate(step)?;
        println!(
            "trial {} step {step}: success {}/{} = {:.1}%",
            job.trial,
            s.successes,
            s.episodes,
            100.0 * s.success_rate
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = cancel_on_signals()?;
    match job.train(&cancel) {
        Ok(report) => {
            println!(
                "trial {} completed: success {:.1}%",
                report.trial_id,
                100.0 * report.final_evaluation.success_rate
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
            eprintln!("{e:#}");
            Ok(Exit::Cancelled.into())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(Exit::Failed.into())
        }
    }
}
