//! A trial's evaluation protocol, the same wherever it runs (in the trial, in an
//! evaluation job, in a report's replay): `eval.episodes` episodes from `eval.seed` and the
//! same sampling stream, so all of them give the same episodes.

use std::time::Instant;

use anyhow::{ensure, Result};
use tracing::warn;

use super::TrialPaths;
use crate::eval::{
    plot_episodes, rollout, rollout_pack, write_episodes_csv, Actor, EpisodeRecord, EvalSummary,
    PackActor,
};
use crate::spec::Spec;
use crate::task::{episode_seeds, Task};

/// Evaluates `actor` (the weights of `step`) on the spec's episodes.
pub fn evaluate_actor(
    spec: &Spec,
    task: &dyn Task,
    actor: &dyn Actor,
    step: u64,
) -> Result<(EvalSummary, Vec<EpisodeRecord>)> {
    let started = Instant::now();
    let seeds = episode_seeds(spec.eval.seed, spec.eval.episodes);
    let records = rollout(task, actor, &seeds, spec.eval.seed)?;
    let summary = summarize(spec, step, &records, started.elapsed().as_secs_f64())?;
    Ok((summary, records))
}

/// The summary of an evaluation's episodes, checked to be the spec's number.
fn summarize(
    spec: &Spec,
    step: u64,
    records: &[EpisodeRecord],
    seconds: f64,
) -> Result<EvalSummary> {
    let summary = EvalSummary::from_records(step, records, seconds);
    ensure!(
        summary.episodes == spec.eval.episodes,
        "evaluation lost episodes"
    );
    if summary.success_rate == 0.0 {
        warn!(step = summary.step, "no episode succeeded");
    }
    Ok(summary)
}

/// Evaluates policies acting together (a pack's members, the weights of `step`), each on
/// its own spec's episodes: member k gets the episodes its [`evaluate_actor`] gives, up to
/// the summation order of batched products (the same on the CPU, tested). The wall time of
/// each summary is the shared rollout's.
pub fn evaluate_pack(
    specs: &[&Spec],
    tasks: &[&dyn Task],
    actor: &dyn PackActor,
    step: u64,
) -> Result<Vec<(EvalSummary, Vec<EpisodeRecord>)>> {
    let started = Instant::now();
    let seeds: Vec<Vec<u64>> = specs
        .iter()
        .map(|s| episode_seeds(s.eval.seed, s.eval.episodes))
        .collect();
    let sampling: Vec<u64> = specs.iter().map(|s| s.eval.seed).collect();
    let records = rollout_pack(tasks, actor, &seeds, &sampling)?;
    let seconds = started.elapsed().as_secs_f64();
    specs
        .iter()
        .zip(records)
        .map(|(spec, r)| Ok((summarize(spec, step, &r, seconds)?, r)))
        .collect()
}

/// The final evaluation's files: one row per episode, and plots if `eval.plots`.
pub fn write_final_evaluation(
    spec: &Spec,
    task: &dyn Task,
    paths: &TrialPaths,
    records: &[EpisodeRecord],
) -> Result<()> {
    write_episodes_csv(&paths.episodes(), records)?;
    if spec.eval.plots {
        plot_episodes(&paths.plots(), records, task)?;
    }
    Ok(())
}
