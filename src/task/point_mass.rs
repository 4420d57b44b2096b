//! A toy task, small enough for tests: a point on a line that must visit a first goal, then
//! a second, and stay there. The action is a position setpoint in `[0, 1]` that the point
//! follows with a first-order lag, `x <- x + gain (a - x)`. Observation `[x, g1, g2, v]`,
//! where `v` is 1 once the first goal was reached (so the expert's choice is a function of
//! the observation, and a small policy learns it in a few hundred steps).
//!
//! It exists to show (and test) that everything outside `task/` works through the [`Task`]
//! trait: training, evaluation jobs and reports run it the same way as the particle task.

use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{episode_rng, EpisodeOutcome, EpisodeSketch, Episodes, Expert, Task, TaskInfo};

/// Registry name of the task.
pub const KIND: &str = "point_mass";

/// `[task]` keys of the point mass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PointMassConfig {
    /// Steps per episode.
    pub n_steps: usize,
    /// Fraction of the way to the setpoint covered in one step.
    pub gain: f64,
    /// A goal is reached when the point comes closer than this.
    pub goal_distance: f64,
}

impl Default for PointMassConfig {
    fn default() -> Self {
        Self {
            n_steps: 12,
            gain: 0.6,
            goal_distance: 0.05,
        }
    }
}

impl PointMassConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.n_steps >= 1, "task.n_steps must be at least 1");
        ensure!(
            self.gain > 0.0 && self.gain <= 1.0,
            "task.gain must be in (0, 1], got {}",
            self.gain
        );
        ensure!(
            self.goal_distance > 0.0,
            "task.goal_distance must be positive, got {}",
            self.goal_distance
        );
        Ok(())
    }
}

pub struct PointMassTask {
    cfg: PointMassConfig,
    info: TaskInfo,
}

impl PointMassTask {
    pub fn new(cfg: PointMassConfig) -> Result<Self> {
        cfg.validate()?;
        let info = TaskInfo {
            kind: KIND.into(),
            obs_dim: 4,
            action_dim: 1,
            episode_steps: cfg.n_steps,
            action_low: vec![0.0],
            action_high: vec![1.0],
        };
        Ok(Self { cfg, info })
    }
}

impl Task for PointMassTask {
    fn info(&self) -> &TaskInfo {
        &self.info
    }

    fn reset(&self, seeds: &[u64]) -> Box<dyn Episodes> {
        let episodes = seeds
            .iter()
            .map(|&seed| {
                let mut rng = episode_rng(seed, 0);
                let [x, g1, g2] = [(); 3].map(|()| rng.random::<f32>());
                let min_distance = [(x - g1).abs(), (x - g2).abs()];
                Point {
                    seed,
                    x,
                    goals: [g1, g2],
                    visited: min_distance[0] < self.cfg.goal_distance as f32,
                    min_distance,
                }
            })
            .collect();
        Box::new(PointEpisodes {
            steps_left: self.cfg.n_steps,
            cfg: self.cfg.clone(),
            episodes,
        })
    }

    fn expert(&self, _seeds: &[u64]) -> Box<dyn Expert> {
        Box::new(GoalSwitcher)
    }

    fn sketch(&self, observations: &[Vec<f32>], actions: &[Vec<f32>]) -> EpisodeSketch {
        let first = observations.first().cloned().unwrap_or(vec![0.0; 4]);
        EpisodeSketch {
            path: observations.iter().map(|o| vec![o[0]]).collect(),
            setpoints: actions.to_vec(),
            goals: vec![vec![first[1]], vec![first[2]]],
            goal_radius: self.cfg.goal_distance as f32,
        }
    }
}

struct Point {
    seed: u64,
    x: f32,
    goals: [f32; 2],
    /// The first goal was reached.
    visited: bool,
    min_distance: [f32; 2],
}

struct PointEpisodes {
    cfg: PointMassConfig,
    episodes: Vec<Point>,
    steps_left: usize,
}

impl Episodes for PointEpisodes {
    fn len(&self) -> usize {
        self.episodes.len()
    }

    fn observations(&self) -> Vec<f32> {
        self.episodes
            .iter()
            .flat_map(|p| [p.x, p.goals[0], p.goals[1], f32::from(u8::from(p.visited))])
            .collect()
    }

    fn step(&mut self, actions: &[f32]) -> Result<()> {
        ensure!(
            actions.len() == self.episodes.len(),
            "one action per episode"
        );
        let (gain, radius) = (self.cfg.gain as f32, self.cfg.goal_distance as f32);
        for (p, &a) in self.episodes.iter_mut().zip(actions) {
            p.x += gain * (a.clamp(0.0, 1.0) - p.x);
            for (d, g) in p.min_distance.iter_mut().zip(p.goals) {
                *d = d.min((p.x - g).abs());
            }
            p.visited |= p.min_distance[0] < radius;
        }
        self.steps_left = self.steps_left.saturating_sub(1);
        Ok(())
    }

    fn steps_taken(&self) -> usize {
        self.cfg.n_steps - self.steps_left
    }

    fn is_done(&self) -> bool {
        self.steps_left == 0
    }

    fn outcomes(&self) -> Vec<EpisodeOutcome> {
        let r = self.cfg.goal_distance as f32;
        self.episodes
            .iter()
            .map(|p| {
                let last = [(p.x - p.goals[0]).abs(), (p.x - p.goals[1]).abs()];
                EpisodeOutcome {
                    seed: p.seed,
                    success: p.min_distance[0] < r && p.min_distance[1] < r && last[1] < r,
                    steps: self.steps_taken(),
                    min_goal_distances: p.min_distance.to_vec(),
                    final_goal_distances: last.to_vec(),
                }
            })
            .collect()
    }
}

/// Heads for the first goal until it was reached, then for the second.
struct GoalSwitcher;

impl Expert for GoalSwitcher {
    fn act(&mut self, observations: &[f32], actions: &mut [f32]) {
        for (obs, action) in observations.chunks(4).zip(actions.iter_mut()) {
            *action = if obs[3] > 0.5 { obs[2] } else { obs[1] };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expert_visits_both_goals_and_stays_at_the_second() {
        let task = PointMassTask::new(PointMassConfig::default()).unwrap();
        let seeds: Vec<u64> = (0..200).collect();
        let demos = crate::task::record_demos(&task, &seeds).unwrap();
        assert!(demos.iter().all(|d| d.success));
        // One step from x = 0 towards a = 1 covers `gain` of the way.
        let mut one = task.reset(&[7]);
        let x0 = one.observations()[0];
        one.step(&[1.0]).unwrap();
        let x1 = one.observations()[0];
        assert!((x1 - (x0 + 0.6 * (1.0 - x0))).abs() < 1e-6);
    }
}
