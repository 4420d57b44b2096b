//! The N-D particle task of IBC: a point mass driven by a PD controller towards
//! position setpoints, which must visit a first goal and then a second one.

mod config;
mod dynamics;
mod env;
mod oracle;

use std::sync::Arc;

use anyhow::Result;

pub use config::{ParticleConfig, SuccessRule};
pub use dynamics::{distance, env_step, substep, GoalTracker};
pub use env::{ParticleEpisodes, ParticleState};
pub use oracle::ParticleOracle;

use super::{Episodes, Expert, Task, TaskInfo};

/// Registry name of the task.
pub const KIND: &str = "particle";

/// The particle task with fixed parameters.
#[derive(Debug, Clone)]
pub struct ParticleTask {
    cfg: Arc<ParticleConfig>,
    info: TaskInfo,
}

impl ParticleTask {
    pub fn new(cfg: ParticleConfig) -> Result<Self> {
        cfg.validate()?;
        let info = TaskInfo {
            kind: KIND.to_owned(),
            obs_dim: cfg.obs_dim(),
            action_dim: cfg.n_dim,
            episode_steps: cfg.n_steps,
            action_low: vec![0.0; cfg.n_dim],
            action_high: vec![1.0; cfg.n_dim],
        };
        Ok(Self {
            cfg: Arc::new(cfg),
            info,
        })
    }

    pub fn config(&self) -> &ParticleConfig {
        &self.cfg
    }

    /// Concrete episodes, for callers that need the particle's state (demo recording).
    pub fn reset_particles(&self, seeds: &[u64]) -> ParticleEpisodes {
        ParticleEpisodes::reset(self.cfg.clone(), seeds)
    }

    /// Episodes from given initial states (to replay recorded demonstrations).
    pub fn episodes_from_states(
        &self,
        seeds: &[u64],
        states: Vec<ParticleState>,
    ) -> Result<ParticleEpisodes> {
        ParticleEpisodes::from_states(self.cfg.clone(), seeds, states)
    }
}

impl Task for ParticleTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn reset(&self, seeds: &[u64]) -> Box<dyn Episodes> {
        Box::new(self.reset_particles(seeds))
    }

    fn expert(&self, seeds: &[u64]) -> Box<dyn Expert> {
        Box::new(ParticleOracle::new(&self.cfg, seeds))
    }
}
