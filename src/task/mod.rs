//! Tasks: environments that a policy acts in, each with an expert that makes demos.
//!
//! The [`Task`] trait is the only door to a task: training, evaluation, reports and the
//! command line all build one from the spec's `[task]` table through [`TaskConfig`], the
//! one registry, and never name a concrete task. A new task is a module and a line in
//! [`TaskConfig`] (plus its arms in `default_for` and `build`).
//! Environments step a whole batch of episodes at once: evaluation rollouts and demo
//! generation both act on many episodes per call.

pub mod demos;
pub mod particle;
pub mod point_mass;
mod seeds;

pub use demos::{
    demo_file_name, demo_files, read_demo_dir, record_demos, validate_dir, write_demos, Demo,
    DemoFileError, DemoFiles, InvalidFile, RecordedDemo, Replay, ValidationReport,
};
pub use seeds::{derive_seed, episode_rng, episode_seeds};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shapes and bounds a policy needs to act in a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub kind: String,
    /// Length of one observation vector.
    pub obs_dim: usize,
    /// Length of one action vector.
    pub action_dim: usize,
    /// Environment steps in one episode.
    pub episode_steps: usize,
    /// Lowest valid action, per dimension.
    pub action_low: Vec<f32>,
    /// Highest valid action, per dimension.
    pub action_high: Vec<f32>,
}

/// How one finished (or stopped) episode went.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeOutcome {
    pub seed: u64,
    pub success: bool,
    /// Steps taken.
    pub steps: usize,
    /// Smallest distance to each of the two goals over the episode, in goal order.
    pub min_goal_distances: Vec<f32>,
    /// Distance to each goal at the last step.
    pub final_goal_distances: Vec<f32>,
}

/// What a picture of an episode shows, in task units: the agent's path, the setpoints it
/// was given, and the goals with their radius (drawn in their first two dimensions).
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeSketch {
    pub path: Vec<Vec<f32>>,
    pub setpoints: Vec<Vec<f32>>,
    /// First goal, then second.
    pub goals: Vec<Vec<f32>>,
    pub goal_radius: f32,
}

/// A batch of episodes stepped together. All arrays are row-major, one row per episode.
pub trait Episodes: Send {
    /// Number of episodes in the batch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Current observations, `len() x obs_dim`.
    fn observations(&self) -> Vec<f32>;
    /// Applies one action per episode, `len() x action_dim`.
    fn step(&mut self, actions: &[f32]) -> Result<()>;
    /// Environment steps taken so far (the same for every episode of a batch).
    fn steps_taken(&self) -> usize;
    /// True once the episodes have run their full length.
    fn is_done(&self) -> bool;
    /// Outcome of every episode so far, judged by the task's success rule.
    fn outcomes(&self) -> Vec<EpisodeOutcome>;
}

/// A scripted expert acting from observations, one internal state per episode.
pub trait Expert: Send {
    /// Writes one action per episode for the given observations (`n x obs_dim`).
    fn act(&mut self, observations: &[f32], actions: &mut [f32]);
}

/// A task: builds batches of seeded episodes and the expert that demonstrates it.
pub trait Task: Send + Sync {
    fn info(&self) -> &TaskInfo;
    /// Starts one episode per seed; the same seed always gives the same episode.
    fn reset(&self, seeds: &[u64]) -> Box<dyn Episodes>;
    /// The task's expert for episodes started with these seeds.
    fn expert(&self, seeds: &[u64]) -> Box<dyn Expert>;
    /// The task's demonstration file format, if it has one (`data generate`,
    /// `data validate`, `data.path`).
    fn demo_files(&self) -> Option<&dyn DemoFiles> {
        None
    }
    /// A picture of an episode from its observations (`steps + 1`) and actions.
    fn sketch(&self, observations: &[Vec<f32>], actions: &[Vec<f32>]) -> EpisodeSketch;
}

/// The spec's `[task]` table: `kind` picks the task, the other keys are its parameters.
/// This enum is the registry of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    /// IBC's N-D particle task.
    Particle(particle::ParticleConfig),
    /// A 1-D toy for tests.
    PointMass(point_mass::PointMassConfig),
}

/// Every task kind the registry knows.
pub const TASK_KINDS: &[&str] = &[particle::KIND, point_mass::KIND];

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig::Particle(Default::default())
    }
}

impl TaskConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TaskConfig::Particle(_) => particle::KIND,
            TaskConfig::PointMass(_) => point_mass::KIND,
        }
    }

    /// The default parameters of the task named `kind`.
    pub fn default_for(kind: &str) -> Result<Self> {
        Ok(match kind {
            particle::KIND => TaskConfig::Particle(Default::default()),
            point_mass::KIND => TaskConfig::PointMass(Default::default()),
            other => bail!(
                "unknown task kind `{other}` (known: {})",
                TASK_KINDS.join(", ")
            ),
        })
    }

    /// The task, its parameters checked.
    pub fn build(&self) -> Result<Box<dyn Task>> {
        Ok(match self {
            TaskConfig::Particle(cfg) => Box::new(particle::ParticleTask::new(cfg.clone())?),
            TaskConfig::PointMass(cfg) => Box::new(point_mass::PointMassTask::new(cfg.clone())?),
        })
    }

    /// The task of `kind` with its defaults changed by `params` (task keys to values).
    pub fn with_params(kind: &str, params: &toml::Table) -> Result<Self> {
        let mut table = match toml::Value::try_from(Self::default_for(kind)?)? {
            toml::Value::Table(table) => table,
            _ => unreachable!("a task config serializes to a table"),
        };
        table.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(toml::Value::Table(table).try_into()?)
    }
}
