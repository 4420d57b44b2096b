//! Demonstrations from the particle oracle.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::demo_file::{demo_file_name, write_demo, ParticleDemo};
use crate::task::particle::{ParticleOracle, ParticleTask};
use crate::task::{Episodes, Expert};

/// A generated episode and whether the oracle succeeded in it.
#[derive(Debug, Clone)]
pub struct RecordedDemo {
    pub demo: ParticleDemo,
    pub success: bool,
}

/// Runs the oracle in one episode per seed (all in one batch) and records everything.
pub fn record_oracle_demos(task: &ParticleTask, seeds: &[u64]) -> Result<Vec<RecordedDemo>> {
    let cfg = task.config();
    let n = cfg.n_dim;
    let mut episodes = task.reset_particles(seeds);
    let mut oracle = ParticleOracle::new(cfg, seeds);
    let mut demos: Vec<ParticleDemo> = (0..seeds.len())
        .map(|i| {
            let s = episodes.state(i);
            ParticleDemo {
                seed: Some(seeds[i]),
                positions: vec![s.position.clone()],
                velocities: vec![s.velocity.clone()],
                actions: Vec::with_capacity(cfg.n_steps),
                first_goal: s.first_goal.clone(),
                second_goal: s.second_goal.clone(),
                multimodal: cfg.multimodal,
            }
        })
        .collect();
    let mut actions = vec![0.0f32; seeds.len() * n];
    while !episodes.is_done() {
        oracle.act(&episodes.observations(), &mut actions);
        episodes.step(&actions)?;
        for (i, (demo, action)) in demos.iter_mut().zip(actions.chunks(n)).enumerate() {
            let s = episodes.state(i);
            demo.actions.push(action.to_vec());
            demo.positions.push(s.position.clone());
            demo.velocities.push(s.velocity.clone());
        }
    }
    let outcomes = episodes.outcomes();
    Ok(demos
        .into_iter()
        .zip(outcomes)
        .map(|(demo, outcome)| RecordedDemo {
            demo,
            success: outcome.success,
        })
        .collect())
}

/// Writes demos as `traj_NNNNNN.json` in `out` (created if missing), numbered from `first_index`.
pub fn write_demos(out: &Path, first_index: usize, demos: &[RecordedDemo]) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    demos.par_iter().enumerate().try_for_each(|(i, recorded)| {
        let path = out.join(demo_file_name(first_index + i));
        write_demo(&path, &recorded.demo, Some(recorded.success))
    })
}
