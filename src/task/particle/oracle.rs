//! IBC's particle oracle: head for the first goal, and once there (for
//! `wait_at_first_goal` steps within `oracle_goal_threshold`) head for the second.

use rand::Rng;

use super::config::ParticleConfig;
use super::dynamics::distance;
use crate::task::{episode_rng, Expert};

/// Per-episode state of the oracle.
#[derive(Debug, Clone, PartialEq)]
struct OracleEpisode {
    /// Goal indices in the order this episode visits them (0 = first goal).
    order: [usize; 2],
    steps_at_first_goal: u32,
}

/// The scripted expert, acting from observations `[p, v, g1, g2]` like IBC's.
#[derive(Debug, Clone)]
pub struct ParticleOracle {
    n_dim: usize,
    threshold: f32,
    wait: u32,
    episodes: Vec<OracleEpisode>,
}

impl ParticleOracle {
    /// One oracle state per episode seed; the multimodal goal order is drawn from the seed.
    pub fn new(cfg: &ParticleConfig, seeds: &[u64]) -> Self {
        let episodes = seeds
            .iter()
            .map(|&seed| OracleEpisode {
                order: if cfg.multimodal && episode_rng(seed, 1).random::<bool>() {
                    [1, 0]
                } else {
                    [0, 1]
                },
                steps_at_first_goal: 0,
            })
            .collect();
        Self {
            n_dim: cfg.n_dim,
            threshold: cfg.oracle_goal_threshold as f32,
            wait: cfg.oracle_wait_at_first_goal,
            episodes,
        }
    }

    /// Goal order of episode `i` (`[0, 1]` is first goal first).
    pub fn goal_order(&self, i: usize) -> [usize; 2] {
        self.episodes[i].order
    }
}

impl Expert for ParticleOracle {
    fn act(&mut self, observations: &[f32], actions: &mut [f32]) {
        let n = self.n_dim;
        for ((episode, obs), action) in self
            .episodes
            .iter_mut()
            .zip(observations.chunks(4 * n))
            .zip(actions.chunks_mut(n))
        {
            let position = &obs[..n];
            let goal = |g: usize| &obs[(2 + g) * n..(3 + g) * n];
            let [first, second] = episode.order;
            if distance(position, goal(first)) < self.threshold {
                episode.steps_at_first_goal += 1;
            }
            let target = if episode.steps_at_first_goal < self.wait {
                first
            } else {
                second
            };
            action.copy_from_slice(goal(target));
        }
    }
}
