//! `ebmlab resume EXPERIMENT`: finish every recorded trial of an experiment that is not
//! completed, each from its latest checkpoint with the config it was recorded with, and
//! evaluate checkpoints still without an evaluation.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::database_path;
use super::schedule::{schedule_and_report, SchedArgs};
use crate::sched::Experiment;
use crate::store::{block_on, Store, TrialStatus};

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Experiment name (as in `ebmlab status`).
    experiment: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Results database: a SQLite file or `postgres://user@host/db` (default:
    /// RUNS/ebmlab.sqlite).
    #[arg(long, env = "EBMLAB_DB", value_parser = super::parse_database)]
    db: Option<crate::store::Database>,
    #[command(flatten)]
    sched: SchedArgs,
}

pub fn run(args: ResumeArgs) -> Result<ExitCode> {
    let db = database_path(&args.runs, &args.db);
    let trials = block_on(async {
        let store = Store::open_read_only(&db).await?;
        store.experiment_trials(&args.experiment).await
    })?;
    if trials.is_empty() {
        bail!("no trials of experiment `{}` in {}", args.experiment, db);
    }
    let open = trials
        .iter()
        .filter(|t| t.status != TrialStatus::Completed)
        .count();
    println!(
        "{}: {} trials, {open} to finish",
        args.experiment,
        trials.len()
    );
    let experiment = Experiment {
        name: args.experiment.clone(),
        runs: args.runs.clone(),
        db,
    };
    // The `[slurm]` options the experiment was run with (its first trial's).
    let slurm = serde_json::from_str::<crate::spec::Spec>(&trials[0].config_json)
        .map(|spec| spec.slurm)
        .unwrap_or_default();
    let ids: Vec<String> = trials.into_iter().map(|t| t.id).collect();
    schedule_and_report(&experiment, &ids, &args.sched, &slurm)
}
