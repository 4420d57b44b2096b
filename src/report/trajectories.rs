//! Evaluation trajectories of a checkpoint, re-simulated: the store keeps each episode's
//! outcome but not its path, and an evaluation is deterministic (same checkpoint, seeds
//! and sampling seed), so replaying it gives the recorded episodes back, paths included.

use std::path::Path;

use anyhow::{Context, Result};

use super::figures::TrajectoryPanel;
use crate::policy::LoadedPolicy;
use crate::spec::Spec;
use crate::task::particle::ParticleTask;
use crate::train::checkpoint::{file_sha256, CheckpointFiles};
use crate::trial::evaluate_actor;

/// Replays the evaluation of the checkpoint at `model` (`step_NNNNNNN.safetensors`) and
/// returns up to `count` episodes, half successes and half failures where there are both,
/// with the number of successes of the whole replay.
pub fn replay(
    spec: &Spec,
    model: &Path,
    sha256: &str,
    step: u64,
    count: usize,
) -> Result<(Vec<TrajectoryPanel>, usize)> {
    let actual = file_sha256(model)?;
    anyhow::ensure!(
        actual == sha256,
        "{}: sha256 differs from the recorded one",
        model.display()
    );
    let dir = model.parent().context("a checkpoint lies in a folder")?;
    let policy = LoadedPolicy::load(&CheckpointFiles::in_dir(dir, step), tch::Device::Cpu)?;
    let task = ParticleTask::new(spec.task.particle.clone())?;
    let (_, records) = evaluate_actor(spec, &task, &policy.view(), step)?;
    let successes = records.iter().filter(|r| r.outcome.success).count();
    let wanted_failures = (count / 2).min(records.len() - successes);
    let wanted_successes = count - wanted_failures.min(count);
    let (mut s, mut f) = (0, 0);
    let mut panels = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let ok = r.outcome.success;
        if (ok && s >= wanted_successes) || (!ok && f >= wanted_failures) {
            continue;
        }
        if ok {
            s += 1
        } else {
            f += 1
        }
        let n = r.actions.first().map_or(0, Vec::len);
        let point = |v: &[f32]| (v[0] as f64, if n > 1 { v[1] as f64 } else { 0.5 });
        let first = &r.observations[0];
        panels.push(TrajectoryPanel {
            title: format!("episode {i} {}", if ok { "success" } else { "failure" }),
            positions: r.observations.iter().map(|o| point(&o[..n])).collect(),
            first_goal: point(&first[2 * n..3 * n]),
            second_goal: point(&first[3 * n..4 * n]),
            success: ok,
        });
    }
    Ok((panels, successes))
}
