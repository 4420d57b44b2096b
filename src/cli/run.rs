//! `ebmlab run SPEC`: every trial of an experiment (its `[sweep]` and `trials`), each in a
//! worker process on a device slot. Finished trials are not rerun; interrupted ones
//! continue from their latest checkpoint; finished trials' checkpoints are evaluated.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::schedule::{schedule_and_report, SchedArgs};
use super::SpecArgs;
use crate::sched::{register_trials, Experiment};
use crate::spec::{expand_trials, load_spec};
use crate::trial::{completed_report, TrialPaths};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: SpecArgs,
    /// List the trials and stop.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    sched: SchedArgs,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let loaded = load_spec(&args.input.spec, &args.input.overrides)?;
    let plans = expand_trials(&loaded.spec)?;
    println!("{}: {} trials", loaded.spec.name, plans.len());
    if args.dry_run {
        for plan in &plans {
            let done = completed_report(&TrialPaths::new(&args.input.runs, &plan.spec), &plan.spec);
            let state = if done.is_some() {
                "completed"
            } else {
                "to run"
            };
            println!("  {}  {:9}  {}", plan.id(), state, plan.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }

    let db = args.input.database();
    register_trials(&db, &args.input.spec, &plans)?;
    let experiment = Experiment {
        name: loaded.spec.name.clone(),
        runs: args.input.runs.clone(),
        db,
    };
    let trials: Vec<String> = plans.iter().map(|p| p.id()).collect();
    schedule_and_report(&experiment, &trials, &args.sched, &loaded.spec.slurm)
}
