//! The N-D particle task of IBC: a point mass driven by a PD controller towards
//! position setpoints, which must visit a first goal and then a second one.

mod config;
mod demo_file;
mod dynamics;
mod env;
mod oracle;
mod replay;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

pub use config::{ParticleConfig, SuccessRule};
pub use demo_file::{parse_demo, read_demo, write_demo, ParticleDemo};
pub use dynamics::{distance, env_step, substep, GoalTracker};
pub use env::{ParticleEpisodes, ParticleState};
pub use oracle::ParticleOracle;
pub use replay::replay_demo;

use super::demos::{DemoFileError, DemoFiles, RecordedDemo, Replay};
use super::{Demo, EpisodeSketch, Episodes, Expert, Task, TaskInfo};

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

    fn demo_files(&self) -> Option<&dyn DemoFiles> {
        Some(self)
    }

    /// The path is the position part of each observation `[p, v, g1, g2]`.
    fn sketch(&self, observations: &[Vec<f32>], actions: &[Vec<f32>]) -> EpisodeSketch {
        let n = self.cfg.n_dim;
        let first = observations
            .first()
            .cloned()
            .unwrap_or_else(|| vec![0.0; 4 * n]);
        EpisodeSketch {
            path: observations.iter().map(|o| o[..n].to_vec()).collect(),
            setpoints: actions.to_vec(),
            goals: vec![first[2 * n..3 * n].to_vec(), first[3 * n..4 * n].to_vec()],
            goal_radius: self.cfg.goal_distance as f32,
        }
    }
}

/// The seed's JSON trajectory files. Replays take this task's parameters, with the
/// dimension and goal order of each file.
impl DemoFiles for ParticleTask {
    fn read(&self, path: &Path) -> Result<Demo, DemoFileError> {
        Ok(read_demo(path)?.to_demo())
    }

    fn write(&self, path: &Path, recorded: &RecordedDemo) -> Result<()> {
        let demo =
            ParticleDemo::from_demo(&recorded.demo, Some(recorded.seed), self.cfg.multimodal);
        write_demo(path, &demo, Some(recorded.success))
    }

    fn replay(&self, path: &Path) -> Result<Replay, String> {
        let demo = read_demo(path).map_err(|e| e.to_string())?;
        replay_demo(&self.cfg, &demo)
            .map_err(|e| format!("{}: cannot be replayed: {e:#}", path.display()))
    }
}
