//! Parameters of the particle task, with IBC's defaults (`environments/particle/particle.py`).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Which trajectories count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SuccessRule {
    /// IBC's `succeeded`: reached the first goal, reached the second, and is still within
    /// `goal_distance` of the second goal at the end.
    #[default]
    Ordered,
    /// For the multimodal oracle (IBC's rule, symmetric in the goals): reached both goals
    /// and is still within `goal_distance` of one of them at the end.
    EitherOrder,
}

/// The N-D particle environment and its oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParticleConfig {
    /// Dimensions N of position, velocity, goals and action.
    pub n_dim: usize,
    /// Environment steps per episode.
    pub n_steps: usize,
    /// Length of one internal Euler substep, seconds.
    pub dt: f64,
    /// Substeps per environment step (the action is held for all of them).
    pub repeat_actions: usize,
    /// Proportional gain of the PD controller.
    pub k_p: f64,
    /// Derivative gain of the PD controller.
    pub k_v: f64,
    /// A goal is reached when the agent comes closer than this.
    pub goal_distance: f64,
    pub success_rule: SuccessRule,
    /// The oracle counts as "at the first goal" closer than this.
    pub oracle_goal_threshold: f64,
    /// Steps the oracle waits at the first goal before heading for the second.
    pub oracle_wait_at_first_goal: u32,
    /// Oracle picks a random goal order per episode (use with `success_rule = either_order`).
    pub multimodal: bool,
}

impl Default for ParticleConfig {
    fn default() -> Self {
        Self {
            n_dim: 2,
            n_steps: 50,
            dt: 0.005,
            repeat_actions: 10,
            k_p: 10.0,
            k_v: 5.0,
            goal_distance: 0.05,
            success_rule: SuccessRule::Ordered,
            oracle_goal_threshold: 0.01,
            oracle_wait_at_first_goal: 1,
            multimodal: false,
        }
    }
}

impl ParticleConfig {
    /// The multimodal variant: random goal order, judged by [`SuccessRule::EitherOrder`].
    pub fn multimodal(mut self) -> Self {
        self.multimodal = true;
        self.success_rule = SuccessRule::EitherOrder;
        self
    }

    /// Rejects parameters the environment cannot run with, naming the key.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.n_dim >= 1,
            "task.n_dim must be at least 1, got {}",
            self.n_dim
        );
        ensure!(
            self.n_steps >= 1,
            "task.n_steps must be at least 1, got {}",
            self.n_steps
        );
        ensure!(
            self.repeat_actions >= 1,
            "task.repeat_actions must be at least 1, got {}",
            self.repeat_actions
        );
        for (key, value) in [
            ("task.dt", self.dt),
            ("task.goal_distance", self.goal_distance),
            ("task.oracle_goal_threshold", self.oracle_goal_threshold),
        ] {
            ensure!(
                value.is_finite() && value > 0.0,
                "{key} must be a positive number, got {value}"
            );
        }
        for (key, value) in [("task.k_p", self.k_p), ("task.k_v", self.k_v)] {
            ensure!(
                value.is_finite() && value >= 0.0,
                "{key} must be a non-negative number, got {value}"
            );
        }
        ensure!(
            self.oracle_wait_at_first_goal >= 1,
            "task.oracle_wait_at_first_goal must be at least 1"
        );
        Ok(())
    }

    /// Length of an observation: position, velocity, first goal, second goal.
    pub fn obs_dim(&self) -> usize {
        4 * self.n_dim
    }
}
