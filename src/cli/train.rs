//! `ebmlab train SPEC`: one trial, end to end.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::{cancel_on_signals, SpecArgs};
use crate::exit::Exit;
use crate::spec::load_spec;
use crate::trial::{run_recorded_trial, RecordedTrial};
use crate::trial::{TrialOptions, TrialPaths, TrialStop};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    input: SpecArgs,
    /// Print the resolved spec and where the trial would run, then stop.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let loaded = load_spec(&args.input.spec, &args.input.overrides)?;
    let spec = loaded.spec;
    if !spec.sweep.is_empty() {
        bail!(
            "{} has a [sweep] of {} keys: `ebmlab train` runs one trial; use `ebmlab run`",
            args.input.spec.display(),
            spec.sweep.len()
        );
    }
    let paths = TrialPaths::new(&args.input.runs, &spec);
    if args.dry_run {
        println!("# trial {} -> {}", spec.trial_id(), paths.dir.display());
        print!("{}", spec.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = cancel_on_signals()?;
    let options = TrialOptions {
        progress: !args.quiet,
        defer_evaluations: false,
    };
    let db = args.input.database();
    let no_overrides = Default::default();
    let trial = RecordedTrial {
        spec: &spec,
        spec_path: &args.input.spec,
        overrides: &no_overrides,
    };
    let report = match run_recorded_trial(trial, &args.input.runs, &db, &options, &cancel) {
        Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
            eprintln!("{e:#}; `ebmlab train` of the same spec continues it");
            return Ok(Exit::Cancelled.into());
        }
        other => other?,
    };
    let e = &report.final_evaluation;
    println!(
        "trial {} ({}, {} iterations, {:.0} s training, {:.1} it/s)",
        report.trial_id,
        report.policy,
        report.iterations,
        report.train_seconds,
        report.iterations_per_second
    );
    println!(
        "success {}/{} = {:.1}%  (95% CI {:.1}-{:.1}%), evaluation {:.0} s",
        e.successes,
        e.episodes,
        100.0 * e.success_rate,
        100.0 * e.ci_low,
        100.0 * e.ci_high,
        e.wall_seconds
    );
    println!("results in {}", report.dir.display());
    Ok(ExitCode::SUCCESS)
}
