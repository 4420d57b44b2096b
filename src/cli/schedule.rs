//! What `run` and `resume` share: how jobs are scheduled, and the report printed after.

use std::process::ExitCode;

use super::progress::ConsoleReporter;
use super::status;
use crate::exit::Exit;
use crate::sched::{
    Backend, Experiment, LocalBackend, RunOptions, RunOutcome, SlurmBackend, SlurmOptions,
};
use crate::spec::SlurmSpec;
use crate::store::{block_on, Store, TrialStatus};

/// How `run` and `resume` schedule their jobs.
#[derive(Debug, clap::Args)]
pub struct SchedArgs {
    /// Stop at the first failed job (running workers checkpoint and stop).
    #[arg(long)]
    pub fail_fast: bool,
    /// Attempts after a failure, each continuing from the trial's latest checkpoint.
    #[arg(long, default_value_t = 0)]
    pub max_retries: u32,
    /// Trials run at once on the CPU (default: `resources.cpu_slots`, else one per core).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Seconds without a heartbeat after which a `running` trial is taken as dead.
    #[arg(long, default_value_t = 60)]
    pub stale_after: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Where workers run: `local` (processes on this host) or `slurm` (`sbatch` jobs; the
    /// runs folder must be on a filesystem the nodes share; `[slurm]` sets the options).
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Submit the jobs and return (with `--backend slurm`): `status`, `query` and `report`
    /// read the database; `resume` follows the jobs still running.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Local,
    Slurm,
}

impl SchedArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            fail_fast: self.fail_fast,
            max_retries: self.max_retries,
            stale_after: std::time::Duration::from_secs(self.stale_after),
            cpu_slots: self.slots,
            detach: self.detach,
        }
    }
}

/// Runs the jobs of `trials`, then prints the experiment's status table and what failed.
/// Exit: 0 when every trial completed, 1 when a job failed, 130 after a signal.
pub fn schedule_and_report(
    experiment: &Experiment,
    trials: &[String],
    args: &SchedArgs,
    slurm: &SlurmSpec,
) -> anyhow::Result<ExitCode> {
    if args.detach && args.backend == BackendKind::Local {
        anyhow::bail!("--detach needs a backend that runs jobs on its own: --backend slurm");
    }
    let mut reporter = ConsoleReporter::new(&experiment.name, !args.quiet);
    let backend: Box<dyn Backend> = match args.backend {
        BackendKind::Local => Box::new(LocalBackend::new()),
        BackendKind::Slurm => Box::new(SlurmBackend::new(SlurmOptions {
            spec: slurm.clone(),
            poll: None,
        })?),
    };
    let summary = crate::sched::run_experiment(
        experiment,
        trials,
        &args.options(),
        backend.as_ref(),
        &mut reporter,
    )?;
    if summary.detached > 0 {
        println!(
            "{}: {} jobs submitted ({} backend); `ebmlab status {0}` shows them, \
             `ebmlab resume {0}` follows them",
            experiment.name,
            summary.detached,
            backend.name()
        );
        return Ok(Exit::Success.into());
    }
    let rows = block_on(async {
        let store = Store::open(&experiment.db).await?;
        store.trial_status(Some(&experiment.name)).await
    })?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| trials.contains(&r.id))
        .collect();
    println!();
    status::print_trials(&rows);
    let completed = rows
        .iter()
        .filter(|r| r.status == TrialStatus::Completed)
        .count();
    println!(
        "{completed} of {} trials completed; {} jobs run, {} failed{}",
        rows.len(),
        summary.launched,
        summary.failures.len(),
        if summary.running_elsewhere.is_empty() {
            String::new()
        } else {
            format!(
                "; {} running in another process",
                summary.running_elsewhere.len()
            )
        }
    );
    for failure in &summary.failures {
        println!(
            "failed: {} ({}): {}",
            failure.job.describe(),
            failure.settings,
            failure.reason
        );
    }
    let exit = match summary.outcome() {
        RunOutcome::Cancelled => Exit::Cancelled,
        RunOutcome::Failed => Exit::Failed,
        RunOutcome::Completed if completed + summary.running_elsewhere.len() < rows.len() => {
            Exit::Failed
        }
        RunOutcome::Completed => Exit::Success,
    };
    Ok(exit.into())
}
