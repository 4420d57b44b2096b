//! Derivative-free optimisation (IBC's iterative importance sampling) for inference:
//! uniform samples, then `iters` rounds of resampling by `softmax(-E)` plus shrinking
//! Gaussian noise, then the lowest-energy sample.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::langevin::Bounds;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DfoConfig {
    pub samples: i64,
    pub iters: usize,
    /// Std of the noise added after the first resampling.
    pub noise_scale: f64,
    /// Factor applied to the noise after every iteration.
    pub noise_shrink: f64,
    pub temperature: f64,
}

impl Default for DfoConfig {
    fn default() -> Self {
        Self {
            samples: 16_384,
            iters: 3,
            noise_scale: 0.33,
            noise_shrink: 0.5,
            temperature: 1.0,
        }
    }
}

/// Lowest-energy actions `(B, A)` for a batch of `batch` problems; `energy` maps candidate
/// actions `(B, K, A)` to energies `(B, K)`. Runs without autograd.
pub fn dfo_minimize(
    batch: i64,
    action_dim: i64,
    bounds: &Bounds,
    cfg: &DfoConfig,
    energy: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let k = cfg.samples;
        let mut samples = bounds.uniform(&[batch, k, action_dim]);
        let mut noise = cfg.noise_scale;
        for _ in 0..cfg.iters {
            let probs = (-energy(&samples) / cfg.temperature).softmax(-1, Kind::Float);
            let picked = probs.multinomial(k, true);
            let index = picked.unsqueeze(-1).expand([batch, k, action_dim], false);
            samples = samples.gather(1, &index, false);
            samples = bounds.clip(&(&samples + samples.randn_like() * noise));
            noise *= cfg.noise_shrink;
        }
        let best = energy(&samples).argmin(-1, false);
        let index = best
            .view([batch, 1, 1])
            .expand([batch, 1, action_dim], false);
        samples.gather(1, &index, false).squeeze_dim(1)
    })
}
