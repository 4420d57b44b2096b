//! A batch of particle episodes stepped together.

use std::sync::Arc;

use anyhow::{ensure, Result};
use rand::Rng;
use rayon::prelude::*;

use super::config::ParticleConfig;
use super::dynamics::{env_step, GoalTracker};
use crate::task::{episode_rng, EpisodeOutcome, Episodes};

/// Episodes per rayon task: below this, threading costs more than the arithmetic.
const MIN_EPISODES_PER_TASK: usize = 64;

/// The full state of one particle episode at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticleState {
    pub position: Vec<f32>,
    pub velocity: Vec<f32>,
    pub first_goal: Vec<f32>,
    pub second_goal: Vec<f32>,
}

impl ParticleState {
    /// IBC's reset: position, first goal and second goal uniform in `[0, 1)^N` (in that
    /// order), velocity zero; drawn from the episode's own generator.
    pub fn sample(seed: u64, n_dim: usize) -> Self {
        let mut rng = episode_rng(seed, 0);
        let mut draw = || {
            (0..n_dim)
                .map(|_| rng.random::<f32>())
                .collect::<Vec<f32>>()
        };
        let position = draw();
        let first_goal = draw();
        let second_goal = draw();
        Self {
            position,
            velocity: vec![0.0; n_dim],
            first_goal,
            second_goal,
        }
    }

    /// The observation vector `[p, v, g1, g2]`.
    pub fn write_observation(&self, out: &mut [f32]) {
        let n = self.position.len();
        out[..n].copy_from_slice(&self.position);
        out[n..2 * n].copy_from_slice(&self.velocity);
        out[2 * n..3 * n].copy_from_slice(&self.first_goal);
        out[3 * n..].copy_from_slice(&self.second_goal);
    }
}

#[derive(Debug, Clone)]
struct Episode {
    seed: u64,
    state: ParticleState,
    goals: GoalTracker,
}

/// Particle episodes advanced in lockstep; see [`Episodes`].
#[derive(Debug, Clone)]
pub struct ParticleEpisodes {
    cfg: Arc<ParticleConfig>,
    episodes: Vec<Episode>,
    steps: usize,
}

impl ParticleEpisodes {
    /// One fresh episode per seed.
    pub fn reset(cfg: Arc<ParticleConfig>, seeds: &[u64]) -> Self {
        let states = seeds
            .iter()
            .map(|&seed| ParticleState::sample(seed, cfg.n_dim))
            .collect();
        Self::from_states(cfg, seeds, states).expect("sampled states match the config")
    }

    /// Episodes starting from given states (to replay recorded demonstrations).
    pub fn from_states(
        cfg: Arc<ParticleConfig>,
        seeds: &[u64],
        states: Vec<ParticleState>,
    ) -> Result<Self> {
        ensure!(seeds.len() == states.len(), "one seed per state is needed");
        let n = cfg.n_dim;
        let mut episodes = Vec::with_capacity(states.len());
        for (&seed, state) in seeds.iter().zip(states) {
            for (name, v) in [
                ("position", &state.position),
                ("velocity", &state.velocity),
                ("first goal", &state.first_goal),
                ("second goal", &state.second_goal),
            ] {
                ensure!(
                    v.len() == n,
                    "{name} has {} dimensions, the task has {n}",
                    v.len()
                );
            }
            let goals = GoalTracker::new(
                state.first_goal.clone(),
                state.second_goal.clone(),
                cfg.goal_distance as f32,
            );
            episodes.push(Episode { seed, state, goals });
        }
        Ok(Self {
            cfg,
            episodes,
            steps: 0,
        })
    }

    /// Current state of episode `i`.
    pub fn state(&self, i: usize) -> &ParticleState {
        &self.episodes[i].state
    }
}

impl Episodes for ParticleEpisodes {
    fn len(&self) -> usize {
        self.episodes.len()
    }

    fn observations(&self) -> Vec<f32> {
        let dim = self.cfg.obs_dim();
        let mut obs = vec![0.0; self.episodes.len() * dim];
        for (episode, row) in self.episodes.iter().zip(obs.chunks_mut(dim)) {
            episode.state.write_observation(row);
        }
        obs
    }

    fn step(&mut self, actions: &[f32]) -> Result<()> {
        let n = self.cfg.n_dim;
        ensure!(
            actions.len() == self.episodes.len() * n,
            "expected {} actions of {n} dimensions, got {} numbers",
            self.episodes.len(),
            actions.len()
        );
        let cfg = &*self.cfg;
        self.episodes
            .par_iter_mut()
            .zip(actions.par_chunks(n))
            .with_min_len(MIN_EPISODES_PER_TASK)
            .for_each(|(episode, action)| {
                let state = &mut episode.state;
                env_step(&mut state.position, &mut state.velocity, action, cfg);
                episode.goals.observe(&state.position);
            });
        self.steps += 1;
        Ok(())
    }

    fn steps_taken(&self) -> usize {
        self.steps
    }

    fn is_done(&self) -> bool {
        self.steps >= self.cfg.n_steps
    }

    fn outcomes(&self) -> Vec<EpisodeOutcome> {
        self.episodes
            .iter()
            .map(|e| EpisodeOutcome {
                seed: e.seed,
                success: e.goals.success(self.cfg.success_rule),
                steps: e.goals.steps(),
                min_goal_distances: e.goals.min_distances().to_vec(),
                final_goal_distances: e.goals.last_distances().to_vec(),
            })
            .collect()
    }
}
