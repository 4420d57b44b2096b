//! A trial's evaluation protocol, the same wherever it runs (in the trial, in an
//! evaluation job, in a report's replay): `eval.episodes` episodes from `eval.seed` and the
//! same sampling stream, so all of them give the same episodes.

use std::time::Instant;

use anyhow::{ensure, Result};
use tracing::warn;

use super::TrialPaths;
use crate::eval::{plot_episodes, rollout, write_episodes_csv, Actor, EpisodeRecord, EvalSummary};
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
    let summary = EvalSummary::from_records(step, &records, started.elapsed().as_secs_f64());
    ensure!(
        summary.episodes == spec.eval.episodes,
        "evaluation lost episodes"
    );
    if summary.success_rate == 0.0 {
        warn!(step = summary.step, "no episode succeeded");
    }
    Ok((summary, records))
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
