//! Evaluation trajectories of a checkpoint, re-simulated: the store keeps each episode's
//! outcome but not its path, and an evaluation is deterministic (same checkpoint, seeds
//! and sampling seed), so replaying it gives the recorded episodes back, paths included.

use std::path::Path;

use anyhow::{Context, Result};

use super::figures::TrajectoryPanel;
use crate::checkpoint::{verify, CheckpointFiles};
use crate::policy::LoadedPolicy;
use crate::spec::Spec;
use crate::trial::evaluate_actor;

/// Episodes of a replayed evaluation to draw.
pub struct ReplayedEpisodes {
    pub panels: Vec<TrajectoryPanel>,
    /// Successes of the whole replay.
    pub successes: usize,
    pub goal_radius: f64,
}

/// Replays the evaluation of the checkpoint whose model file is `model` (checked against
/// the recorded `sha256` and the checksums beside it) and returns up to `count` episodes,
/// half successes and half failures where there are both. It runs on the GPU where there
/// is one (as a trial there was evaluated: the CPU draws other random numbers, and its
/// Langevin replay of IBC's config did not end within 40 s on 16 cores), else on the CPU.
pub fn replay(spec: &Spec, model: &Path, sha256: &str, count: usize) -> Result<ReplayedEpisodes> {
    let files = CheckpointFiles::of_model_file(model)?;
    let checkpoint = verify(&files, Some(sha256))?;
    let policy = LoadedPolicy::load(&checkpoint, tch::Device::cuda_if_available())?;
    let task = spec.task.build().context("the trial's [task]")?;
    let (_, records) = evaluate_actor(spec, task.as_ref(), &policy.view(), files.step)?;
    let successes = records.iter().filter(|r| r.outcome.success).count();
    let wanted_failures = (count / 2).min(records.len() - successes);
    let wanted_successes = count - wanted_failures.min(count);
    let (mut s, mut f) = (0, 0);
    let mut panels = Vec::new();
    let mut goal_radius = 0.0;
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
        let sketch = task.sketch(&r.observations, &r.actions);
        goal_radius = sketch.goal_radius as f64;
        let n = sketch.path.first().map_or(0, Vec::len);
        // A 1-D path is drawn against time.
        let steps = sketch.path.len().saturating_sub(1).max(1) as f64;
        let point = |t: usize, v: &[f32]| match n {
            1 => (t as f64 / steps, v[0] as f64),
            _ => (v[0] as f64, v[1] as f64),
        };
        let goal = |g: &[f32]| {
            if n == 1 {
                (0.5, g[0] as f64)
            } else {
                point(0, g)
            }
        };
        panels.push(TrajectoryPanel {
            title: format!("episode {i} {}", if ok { "success" } else { "failure" }),
            positions: sketch
                .path
                .iter()
                .enumerate()
                .map(|(t, p)| point(t, p))
                .collect(),
            first_goal: goal(&sketch.goals[0]),
            second_goal: goal(&sketch.goals[1]),
            success: ok,
        });
    }
    Ok(ReplayedEpisodes {
        panels,
        successes,
        goal_radius,
    })
}
