//! `ebmlab run SPEC`: every trial of an experiment (its `[sweep]` and `trials`), one after
//! another in this process on the spec's device. Finished trials are reported, not rerun;
//! interrupted ones continue from their latest checkpoint. (Device slots and worker
//! processes are the scheduler's job, which replaces this loop.)

use std::fs;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tracing::warn;

use super::{cancel_on_signals, run_recorded_trial, SpecArgs, EXIT_CANCELLED, EXIT_FAILED_CHECK};
use crate::spec::{expand_trials, load_spec};
use crate::store::{block_on, Store};
use crate::trial::{completed_report, TrialOptions, TrialPaths, TrialReport, TrialStop};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: SpecArgs,
    /// List the trials and stop.
    #[arg(long)]
    dry_run: bool,
    /// Stop at the first failed trial.
    #[arg(long)]
    fail_fast: bool,
    /// Attempts after a failure, each continuing from the trial's latest checkpoint.
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

enum Outcome {
    Completed(TrialReport),
    Skipped(TrialReport),
    Failed(String),
    NotRun,
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

    let cancel = cancel_on_signals()?;
    let db = args.input.database();
    // Every trial is known (pending) before the first starts: status and resume see them all.
    block_on(async {
        let store = Store::open(&db).await?;
        store
            .upsert_experiment(&loaded.spec.name, &args.input.spec.display().to_string())
            .await?;
        for plan in &plans {
            store
                .add_trial(
                    &plan.spec.name,
                    &plan.id(),
                    &serde_json::to_string(&plan.overrides)?,
                    &serde_json::to_string(&plan.spec)?,
                    plan.spec.train.iterations,
                )
                .await?;
        }
        anyhow::Ok(())
    })?;
    let options = TrialOptions {
        progress: !args.quiet,
    };
    let mut outcomes: Vec<Outcome> = plans.iter().map(|_| Outcome::NotRun).collect();
    let mut cancelled = false;
    'trials: for (i, plan) in plans.iter().enumerate() {
        let paths = TrialPaths::new(&args.input.runs, &plan.spec);
        if let Some(done) = completed_report(&paths, &plan.spec) {
            outcomes[i] = Outcome::Skipped(done);
            continue;
        }
        println!(
            "[{}/{}] trial {}  {}",
            i + 1,
            plans.len(),
            plan.id(),
            plan.describe()
        );
        for attempt in 0..=args.max_retries {
            let result = run_recorded_trial(
                &plan.spec,
                &args.input.spec,
                &plan.overrides,
                &args.input.runs,
                &db,
                &options,
                &cancel,
            );
            match result {
                Ok(report) => {
                    let _ = fs::remove_file(paths.dir.join("failure.txt"));
                    outcomes[i] = Outcome::Completed(report);
                    continue 'trials;
                }
                Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
                    warn!("{e:#}");
                    cancelled = true;
                    break 'trials;
                }
                Err(e) => {
                    let reason = format!("attempt {}: {e:#}", attempt + 1);
                    eprintln!("trial {} failed: {reason}", plan.id());
                    fs::create_dir_all(&paths.dir)?;
                    fs::write(paths.dir.join("failure.txt"), format!("{reason}\n"))?;
                    outcomes[i] = Outcome::Failed(reason);
                }
            }
        }
        if args.fail_fast {
            break;
        }
    }

    println!(
        "\n{:12}  {:10}  {:>22}  {:>8}  settings",
        "trial", "status", "success [95% CI]", "it/s"
    );
    for (plan, outcome) in plans.iter().zip(&outcomes) {
        let (status, result, rate) = match outcome {
            Outcome::Completed(r) | Outcome::Skipped(r) => {
                let e = &r.final_evaluation;
                (
                    if matches!(outcome, Outcome::Completed(_)) {
                        "completed"
                    } else {
                        "done before"
                    },
                    format!(
                        "{:5.1}% [{:5.1}, {:5.1}]",
                        100.0 * e.success_rate,
                        100.0 * e.ci_low,
                        100.0 * e.ci_high
                    ),
                    format!("{:.1}", r.iterations_per_second),
                )
            }
            Outcome::Failed(reason) => ("failed", String::new(), reason.clone()),
            Outcome::NotRun => (
                if cancelled { "killed" } else { "not run" },
                String::new(),
                String::new(),
            ),
        };
        println!(
            "{:12}  {:10}  {:>22}  {:>8}  {}",
            plan.id(),
            status,
            result,
            rate,
            plan.describe()
        );
    }
    if cancelled {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    let failed = outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed(_) | Outcome::NotRun));
    Ok(if failed {
        ExitCode::from(EXIT_FAILED_CHECK)
    } else {
        ExitCode::SUCCESS
    })
}
