//! `ebmlab resume EXPERIMENT`: finish every recorded trial of an experiment that is not
//! completed, each from its latest checkpoint, with the config it was recorded with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{
    cancel_on_signals, database_path, run_recorded_trial, EXIT_CANCELLED, EXIT_FAILED_CHECK,
};
use crate::spec::Spec;
use crate::store::{block_on, Store};
use crate::trial::{TrialOptions, TrialStop};

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Experiment name (as in `ebmlab status`).
    experiment: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Results database (default: RUNS/ebmlab.sqlite).
    #[arg(long)]
    db: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ResumeArgs) -> Result<ExitCode> {
    let db = database_path(&args.runs, &args.db);
    let trials = block_on(async {
        let store = Store::open_read_only(&db).await?;
        store.experiment_trials(&args.experiment).await
    })?;
    if trials.is_empty() {
        bail!(
            "no trials of experiment `{}` in {}",
            args.experiment,
            db.display()
        );
    }
    let open: Vec<_> = trials.iter().filter(|t| t.status != "completed").collect();
    println!(
        "{}: {} trials, {} to finish",
        args.experiment,
        trials.len(),
        open.len()
    );
    let cancel = cancel_on_signals()?;
    let options = TrialOptions {
        progress: !args.quiet,
    };
    let mut failed = 0;
    for trial in open {
        let spec: Spec = serde_json::from_str(&trial.config_json)
            .with_context(|| format!("trial {}: its recorded config", trial.id))?;
        let overrides: BTreeMap<String, toml::Value> =
            serde_json::from_str(&trial.overrides_json).unwrap_or_default();
        let spec_path = trial.spec_path.clone().unwrap_or_default();
        println!("trial {} ({}): continuing", trial.id, trial.status);
        match run_recorded_trial(
            &spec,
            Path::new(&spec_path),
            &overrides,
            &args.runs,
            &db,
            &options,
            &cancel,
        ) {
            Ok(report) => println!(
                "trial {}: completed, success {:.1}%",
                report.trial_id,
                100.0 * report.final_evaluation.success_rate
            ),
            Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::from(EXIT_CANCELLED));
            }
            Err(e) => {
                eprintln!("trial {} failed: {e:#}", trial.id);
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(EXIT_FAILED_CHECK)
    } else {
        ExitCode::SUCCESS
    })
}
