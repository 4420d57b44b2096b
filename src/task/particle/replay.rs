//! Replays a recorded demonstration through the environment: does the file obey the
//! dynamics, and does it succeed by the task's rule?

use anyhow::Result;

use super::demo_file::ParticleDemo;
use super::{ParticleConfig, ParticleTask};
use crate::task::demos::Replay;
use crate::task::Episodes;

/// Replays `demo`'s actions from its initial state with the given environment parameters
/// (its dimension and success rule are taken from the demo).
pub fn replay_demo(base: &ParticleConfig, demo: &ParticleDemo) -> Result<Replay> {
    let mut cfg = ParticleConfig {
        n_dim: demo.n_dim(),
        n_steps: demo.actions.len(),
        ..base.clone()
    };
    if demo.multimodal {
        cfg = cfg.multimodal();
    }
    let task = ParticleTask::new(cfg)?;
    let seed = demo.seed.unwrap_or(0);
    let mut episodes = task.episodes_from_states(&[seed], vec![demo.state(0)])?;
    let mut drift = (0.0f32, 0.0f32);
    for (t, action) in demo.actions.iter().enumerate() {
        episodes.step(action)?;
        if let Some(recorded) = demo.positions.get(t + 1) {
            let replayed = episodes.state(0);
            drift.0 = drift.0.max(max_abs_diff(recorded, &replayed.position));
            drift.1 = drift
                .1
                .max(max_abs_diff(&demo.velocities[t + 1], &replayed.velocity));
        }
    }
    Ok(Replay {
        position_drift: drift.0,
        velocity_drift: drift.1,
        success: episodes.outcomes()[0].success,
    })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
