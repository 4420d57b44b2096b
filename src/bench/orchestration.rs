//! What the orchestration costs: the time a scheduled trial spends outside its own work
//! (worker process start, libtorch load, database open, recording), and how many metric
//! rows per second the results store takes in.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{ensure, Result};
use serde_json::json;

use super::BenchRecord;
use crate::sched::{
    register_trials, run_experiment, EventLog, Experiment, LocalBackend, RunOptions,
};
use crate::spec::{expand_trials, load_spec_with_env, TrialPlan};
use crate::store::{block_on, Database, MetricRow, Store};
use crate::trial::{run_trial, NoObserver, TrialOptions};

/// A trial with almost no work: one iteration of a tiny net, one short episode.
const TRIVIAL: &str = "name = \"bench-trivial\"\n\
    [data]\ndemos = 2\n\
    [policy]\nhidden = 8\n\
    [train]\niterations = 1\nbatch_size = 4\ncheckpoint_every = 1\neval_every = 0\nlog_every = 1\n\
    [train.negatives]\nkind = \"uniform\"\ncount = 4\n\
    [eval]\nepisodes = 1\nsamples = 8\n\
    [resources]\ndevice = \"cpu\"\n";

fn figure(bench: &str, config: serde_json::Value, ms: f64, per_second: Option<f64>) -> BenchRecord {
    BenchRecord {
        bench: bench.into(),
        implementation: "ebmlab".into(),
        device: "cpu".into(),
        threads: tch::get_num_threads() as i64,
        config,
        repeats: 1,
        median_ms: ms,
        min_ms: ms,
        per_second,
        device_waits_per_step: None,
    }
}

/// Trivial trials through the scheduler on one slot, against the same trials run in this
/// process. A slot's worker starts once (libtorch loaded) and then serves job after job, so
/// two figures: the start-up (a run of one trial), and the overhead of each further job
/// (a run of `trials`, less the run of one, per further trial, less the trial's own work).
pub fn trial_overhead(trials: usize, emit: &mut dyn FnMut(&BenchRecord)) -> Result<()> {
    ensure!(trials >= 2, "the overhead takes at least 2 trials");
    let dir = tempfile::tempdir()?;
    let sweep = |name: &str, n: usize| -> Result<(std::path::PathBuf, Vec<TrialPlan>)> {
        let path = dir.path().join(format!("{name}.toml"));
        let seeds: Vec<String> = (0..n).map(|s| s.to_string()).collect();
        let spec = TRIVIAL.replace("bench-trivial", name);
        std::fs::write(
            &path,
            format!("{spec}[sweep]\n\"train.seed\" = [{}]\n", seeds.join(", ")),
        )?;
        let spec = load_spec_with_env(&path, &[], Vec::new())?.spec;
        Ok((path, expand_trials(&spec)?))
    };
    let (many_path, many) = sweep("bench-many", trials)?;
    let (one_path, one) = sweep("bench-one", 1)?;

    // In this process, without a store: the trials' own work.
    let inline_runs = dir.path().join("inline");
    let started = Instant::now();
    for plan in &many {
        run_trial(
            &plan.spec,
            &inline_runs,
            &TrialOptions::default(),
            &AtomicBool::new(false),
            &mut NoObserver,
        )?;
    }
    let inline_ms = started.elapsed().as_secs_f64() * 1e3 / trials as f64;
    let one_ms = scheduled_ms(dir.path(), &one_path, &one)?;
    let many_ms = scheduled_ms(dir.path(), &many_path, &many)?;
    let per_job = (many_ms - one_ms) / (trials - 1) as f64 - inline_ms;
    let config = json!({"trials": trials, "slots": 1, "iterations": 1, "hidden": 8});
    emit(&figure("trial_in_process", config.clone(), inline_ms, None));
    emit(&figure(
        "trial_scheduled",
        config.clone(),
        many_ms / trials as f64,
        None,
    ));
    emit(&figure(
        "worker_startup",
        config.clone(),
        one_ms - inline_ms - per_job,
        None,
    ));
    emit(&figure("trial_overhead", config, per_job, None));
    Ok(())
}

/// Milliseconds the scheduler takes to run `plans` (registered first) on one CPU slot.
fn scheduled_ms(
    dir: &std::path::Path,
    spec_path: &std::path::Path,
    plans: &[TrialPlan],
) -> Result<f64> {
    let name = plans[0].spec.name.clone();
    let experiment = Experiment {
        runs: dir.join(&name),
        db: Database::Sqlite(dir.join(&name).join("ebmlab.sqlite")),
        name,
    };
    register_trials(&experiment.db, spec_path, plans)?;
    let options = RunOptions {
        fail_fast: false,
        max_retries: 0,
        stale_after: std::time::Duration::from_secs(60),
        cpu_slots: Some(1),
        detach: false,
    };
    let ids: Vec<String> = plans.iter().map(|p| p.id()).collect();
    let started = Instant::now();
    let summary = run_experiment(
        &experiment,
        &ids,
        &options,
        &LocalBackend::new(),
        &mut EventLog::default(),
    )?;
    ensure!(
        summary.succeeded == plans.len() && summary.failures.is_empty(),
        "the trivial trials did not all complete: {:?}",
        summary.failures
    );
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// Metric rows written the way a trial's recorder writes them (batches of 2,000), by one
/// writer and by `writers` concurrent ones, into a fresh SQLite file, or into `postgres`
/// (under an experiment name of their own) when given.
pub fn metric_ingest(
    rows: usize,
    writers: usize,
    postgres: Option<&Database>,
    emit: &mut dyn FnMut(&BenchRecord),
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = format!("bench-ingest-{}", std::process::id());
    let batch = |writer: usize, start: usize, n: usize| -> Vec<MetricRow> {
        (start..start + n)
            .map(|i| MetricRow {
                experiment: run.clone(),
                trial: format!("w{writer}"),
                step: (i / 8) as i64,
                name: format!("m{}", i % 8),
                value: i as f64,
                wall_time: 0.0,
            })
            .collect()
    };
    let write_all = |db: &Database, writer: usize, n: usize| -> Result<()> {
        block_on(async {
            let store = Store::open(db).await?;
            for start in (0..n).step_by(2000) {
                store
                    .insert_metrics(&batch(writer, start, 2000.min(n - start)))
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let (single, shared, kind) = match postgres {
        Some(db) => (db.clone(), db.clone(), "postgres"),
        None => (
            Database::Sqlite(dir.path().join("single.sqlite")),
            Database::Sqlite(dir.path().join("shared.sqlite")),
            "sqlite",
        ),
    };
    block_on(Store::open(&single))?;
    let started = Instant::now();
    write_all(&single, 0, rows)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    emit(&figure(
        "metric_ingest",
        json!({"rows": rows, "writers": 1, "batch": 2000, "database": kind}),
        ms,
        Some(rows as f64 / (ms / 1e3)),
    ));

    block_on(Store::open(&shared))?;
    let per_writer = rows / writers;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let shared = &shared;
                // Writers 1.. of the second round: the single writer already wrote `w0`.
                scope.spawn(move || write_all(shared, w + 1, per_writer))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("writer thread"))
    })?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    emit(&figure(
        "metric_ingest",
        json!({"rows": per_writer * writers, "writers": writers, "batch": 2000, "database": kind}),
        ms,
        Some((per_writer * writers) as f64 / (ms / 1e3)),
    ));
    Ok(())
}
