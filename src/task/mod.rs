//! Tasks: environments that a policy acts in, each with an expert (oracle) that makes demos.
//!
//! A task is chosen by `kind` in the spec and built through [`from_kind`], the one registry.
//! Environments step a whole batch of episodes at once: evaluation rollouts and demo
//! generation both act on many episodes per call.

pub mod particle;
mod seeds;

pub use seeds::{derive_seed, episode_rng, episode_seeds};

use anyhow::{bail, Result};

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
    /// Smallest distance to each goal over the episode, in goal order.
    pub min_goal_distances: Vec<f32>,
    /// Distance to each goal at the last step.
    pub final_goal_distances: Vec<f32>,
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
}

/// Every task kind the registry knows.
pub const TASK_KINDS: &[&str] = &[particle::KIND];

/// Builds the task named `kind` with its default parameters and `n_dim` dimensions.
pub fn from_kind(kind: &str, n_dim: usize) -> Result<Box<dyn Task>> {
    match kind {
        particle::KIND => Ok(Box::new(particle::ParticleTask::new(
            particle::ParticleConfig {
                n_dim,
                ..Default::default()
            },
        )?)),
        other => bail!(
            "unknown task kind `{other}` (known: {})",
            TASK_KINDS.join(", ")
        ),
    }
}
