//! What `run` and `resume` share: how jobs are scheduled, and the report printed after.

use std::process::ExitCode;

use super::{status, EXIT_CANCELLED, EXIT_FAILED_CHECK};

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
}

impl SchedArgs {
    pub fn options(&self) -> crate::sched::RunOptions {
        crate::sched::RunOptions {
            fail_fast: self.fail_fast,
            max_retries: self.max_retries,
            stale_after: std::time::Duration::from_secs(self.stale_after),
            cpu_slots: self.slots,
            progress: !self.quiet,
            report_events: true,
        }
    }
}

/// Runs the jobs of `trials`, then prints the experiment's status table; the exit status
/// says whether every trial completed (130 after a signal).
pub fn schedule_and_report(
    experiment: &crate::sched::Experiment,
    trials: &[String],
    args: &SchedArgs,
) -> anyhow::Result<ExitCode> {
    let summary = crate::sched::run_experiment(
        experiment,
        trials,
        &args.options(),
        &crate::sched::LocalBackend,
    )?;
    let rows = crate::store::block_on(async {
        let store = crate::store::Store::open(&experiment.db).await?;
        store.trial_status(Some(&experiment.name)).await
    })?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| trials.contains(&r.id))
        .collect();
    println!();
    status::print_trials(&rows);
    let completed = rows.iter().filter(|r| r.status == "completed").count();
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
    Ok(if summary.cancelled {
        ExitCode::from(EXIT_CANCELLED)
    } else if !summary.failures.is_empty()
        || completed + summary.running_elsewhere.len() < rows.len()
    {
        ExitCode::from(EXIT_FAILED_CHECK)
    } else {
        ExitCode::SUCCESS
    })
}
