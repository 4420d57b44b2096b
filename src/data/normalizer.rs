//! Normalization of observations (z-score per feature) and actions (min-max to [-1, 1] per
//! dimension), stored as `norm_params.json` with the seed's keys.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Smallest standard deviation or range treated as non-zero (constant features stay finite).
const MIN_SCALE: f32 = 1e-6;

/// The seed's `norm_params.json`, plus the normalized action bounds that samplers draw in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalizer {
    pub obs_mean: Vec<f32>,
    pub obs_std: Vec<f32>,
    pub action_min: Vec<f32>,
    pub action_range: Vec<f32>,
    /// Lowest normalized action a sampler may propose (IBC's widened bounds).
    pub sample_low: Vec<f32>,
    /// Highest normalized action a sampler may propose.
    pub sample_high: Vec<f32>,
    /// The same bounds in task units; denormalized actions are clamped to them, so float
    /// rounding never takes an action outside the task's action space.
    pub action_low: Vec<f32>,
    pub action_high: Vec<f32>,
}

impl Normalizer {
    /// Statistics of `observations` (`n x obs_dim`) and `actions` (`n x action_dim`).
    ///
    /// The sampling bounds are IBC's: the data's action range widened by
    /// `boundary_buffer x range` on each side, then clipped to the task's own action bounds.
    pub fn fit(
        observations: &[f32],
        obs_dim: usize,
        actions: &[f32],
        action_dim: usize,
        boundary_buffer: f32,
        task_bounds: (&[f32], &[f32]),
    ) -> Result<Self> {
        ensure!(!actions.is_empty(), "no actions to fit a normalizer to");
        let rows = observations.len() / obs_dim;
        let mut mean = vec![0.0f64; obs_dim];
        for row in observations.chunks(obs_dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let mut var = vec![0.0f64; obs_dim];
        for row in observations.chunks(obs_dim) {
            for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
                *v += (x as f64 - m).powi(2);
            }
        }
        let obs_std = var
            .iter()
            .map(|v| ((v / rows as f64).sqrt() as f32).max(MIN_SCALE))
            .collect();

        let mut low = vec![f32::INFINITY; action_dim];
        let mut high = vec![f32::NEG_INFINITY; action_dim];
        for row in actions.chunks(action_dim) {
            for (i, &a) in row.iter().enumerate() {
                low[i] = low[i].min(a);
                high[i] = high[i].max(a);
            }
        }
        let range: Vec<f32> = low
            .iter()
            .zip(&high)
            .map(|(l, h)| (h - l).max(MIN_SCALE))
            .collect();
        let mut norm = Self {
            obs_mean: mean.iter().map(|&m| m as f32).collect(),
            obs_std,
            action_min: low.clone(),
            action_range: range.clone(),
            sample_low: Vec::new(),
            sample_high: Vec::new(),
            action_low: Vec::new(),
            action_high: Vec::new(),
        };
        let (task_low, task_high) = task_bounds;
        for i in 0..action_dim {
            let lo = (low[i] - boundary_buffer * range[i]).max(task_low[i]);
            let hi = (high[i] + boundary_buffer * range[i]).min(task_high[i]);
            norm.sample_low.push(norm.normalize_action_value(i, lo));
            norm.sample_high.push(norm.normalize_action_value(i, hi));
            norm.action_low.push(lo);
            norm.action_high.push(hi);
        }
        Ok(norm)
    }

    fn normalize_action_value(&self, i: usize, a: f32) -> f32 {
        2.0 * (a - self.action_min[i]) / self.action_range[i] - 1.0
    }

    /// Normalizes observation rows in place (`obs_dim` must divide `values.len()`).
    pub fn normalize_observations(&self, values: &mut [f32]) {
        let d = self.obs_mean.len();
        for row in values.chunks_mut(d) {
            for ((x, m), s) in row.iter_mut().zip(&self.obs_mean).zip(&self.obs_std) {
                *x = (*x - m) / s;
            }
        }
    }

    pub fn normalize_actions(&self, values: &mut [f32]) {
        let d = self.action_min.len();
        for row in values.chunks_mut(d) {
            for (i, a) in row.iter_mut().enumerate() {
                *a = self.normalize_action_value(i, *a);
            }
        }
    }

    /// Back to task units, clamped to the sampling bounds.
    pub fn denormalize_actions(&self, values: &mut [f32]) {
        let d = self.action_min.len();
        for row in values.chunks_mut(d) {
            for (i, a) in row.iter_mut().enumerate() {
                let a_task = (*a + 1.0) / 2.0 * self.action_range[i] + self.action_min[i];
                *a = a_task.clamp(self.action_low[i], self.action_high[i]);
            }
        }
    }

    /// The seed's `norm_params.json` text.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let norm: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a norm_params.json", path.display()))?;
        ensure!(
            norm.obs_mean.len() == norm.obs_std.len()
                && norm.action_min.len() == norm.action_range.len()
                && norm.sample_low.len() == norm.action_min.len()
                && norm.sample_high.len() == norm.action_min.len()
                && norm.action_low.len() == norm.action_min.len()
                && norm.action_high.len() == norm.action_min.len(),
            "{}: arrays of inconsistent lengths",
            path.display()
        );
        Ok(norm)
    }
}
