//! The particle's physics and goal bookkeeping, as pure functions over slices.
//!
//! Everything is `f32`, operation by operation in IBC's order, so a float32 numpy
//! implementation gives the same bits.

use super::config::{ParticleConfig, SuccessRule};

/// One explicit-Euler substep of the PD-controlled point mass:
/// `u = k_p (a - p) - k_v v`, `p' = p + v dt` (old velocity), `v' = v + u dt`.
pub fn substep(pos: &mut [f32], vel: &mut [f32], setpoint: &[f32], cfg: &ParticleConfig) {
    let (k_p, k_v, dt) = (cfg.k_p as f32, cfg.k_v as f32, cfg.dt as f32);
    for ((p, v), &a) in pos.iter_mut().zip(vel.iter_mut()).zip(setpoint) {
        let u = k_p * (a - *p) - k_v * *v;
        let new_p = *p + *v * dt;
        let new_v = *v + u * dt;
        *p = new_p;
        *v = new_v;
    }
}

/// One environment step: the setpoint held for `repeat_actions` substeps.
pub fn env_step(pos: &mut [f32], vel: &mut [f32], setpoint: &[f32], cfg: &ParticleConfig) {
    for _ in 0..cfg.repeat_actions {
        substep(pos, vel, setpoint, cfg);
    }
}

/// Euclidean distance in `f32`.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Tracks an episode's distances to its two goals, checked after every environment step.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalTracker {
    goals: [Vec<f32>; 2],
    goal_distance: f32,
    steps: usize,
    min_distance: [f32; 2],
    last_distance: [f32; 2],
}

impl GoalTracker {
    pub fn new(first_goal: Vec<f32>, second_goal: Vec<f32>, goal_distance: f32) -> Self {
        Self {
            goals: [first_goal, second_goal],
            goal_distance,
            steps: 0,
            min_distance: [f32::INFINITY; 2],
            last_distance: [f32::INFINITY; 2],
        }
    }

    /// Records the agent's position after one environment step.
    pub fn observe(&mut self, position: &[f32]) {
        self.steps += 1;
        for g in 0..2 {
            let d = distance(position, &self.goals[g]);
            self.last_distance[g] = d;
            self.min_distance[g] = self.min_distance[g].min(d);
        }
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn min_distances(&self) -> [f32; 2] {
        self.min_distance
    }

    pub fn last_distances(&self) -> [f32; 2] {
        self.last_distance
    }

    /// Whether the trajectory observed so far succeeds under `rule`.
    pub fn success(&self, rule: SuccessRule) -> bool {
        let hit = |g: usize| self.min_distance[g] < self.goal_distance;
        let still_at = |g: usize| self.last_distance[g] < self.goal_distance;
        match rule {
            SuccessRule::Ordered => hit(0) && hit(1) && still_at(1),
            SuccessRule::EitherOrder => hit(0) && hit(1) && (still_at(0) || still_at(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_substep_by_hand() {
        // u = 10 (0.7 - 0.2) - 5 (0.1) = 4.5; p' = 0.2 + 0.1 * 0.005; v' = 0.1 + 4.5 * 0.005.
        let cfg = ParticleConfig::default();
        let (mut p, mut v) = ([0.2f32], [0.1f32]);
        substep(&mut p, &mut v, &[0.7], &cfg);
        assert!((p[0] - 0.2005).abs() < 1e-7, "{}", p[0]);
        assert!((v[0] - 0.1225).abs() < 1e-7, "{}", v[0]);
    }

    #[test]
    fn distance_is_euclidean() {
        assert_eq!(distance(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
    }
}
