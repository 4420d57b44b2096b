//! Derivative-free optimisation (IBC's iterative importance sampling) for inference:
//! uniform samples, then `iters` rounds of resampling by `softmax(-E)` plus shrinking
//! Gaussian noise, then the lowest-energy sample.
//!
//! Its random numbers are drawn before it starts ([`DfoDraws`]) and rows are resampled by
//! the inverse CDF of pre-drawn uniforms, so policies acting together (a pack's members)
//! each use exactly the numbers they use alone.

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

/// The random numbers of one DFO call, solo shapes: uniform starts `(B, K, A)`, and per
/// round the uniforms that pick rows `(B, K)` and the noise added after `(B, K, A)`.
/// A pack stacks its members' draws in a new leading dimension.
#[derive(Debug)]
pub struct DfoDraws {
    pub init: Tensor,
    pub uniforms: Vec<Tensor>,
    pub noise: Vec<Tensor>,
}

impl DfoDraws {
    /// Draws in this order: the starts, then each round's uniforms and noise.
    pub fn draw(batch: i64, action_dim: i64, bounds: &Bounds, cfg: &DfoConfig) -> Self {
        let k = cfg.samples;
        let init = bounds.uniform(&[batch, k, action_dim]);
        let options = (Kind::Float, init.device());
        let (mut uniforms, mut noise) = (Vec::new(), Vec::new());
        for _ in 0..cfg.iters {
            uniforms.push(Tensor::rand([batch, k], options));
            noise.push(Tensor::randn([batch, k, action_dim], options));
        }
        Self {
            init,
            uniforms,
            noise,
        }
    }

    /// The members' draws stacked in a new leading dimension.
    pub fn stack(members: &[Self]) -> Self {
        let stack = |f: &dyn Fn(&Self) -> &Tensor| {
            Tensor::stack(&members.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let rounds = members[0].uniforms.len();
        Self {
            init: stack(&|d| &d.init),
            uniforms: (0..rounds).map(|i| stack(&|d| &d.uniforms[i])).collect(),
            noise: (0..rounds).map(|i| stack(&|d| &d.noise[i])).collect(),
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
    let draws = DfoDraws::draw(batch, action_dim, bounds, cfg);
    dfo_minimize_drawn(draws, bounds, cfg, energy)
}

/// [`dfo_minimize`] with its draws given: candidates `(.., K, A)` (any leading dimensions,
/// e.g. a pack's members and their problems), `energy` mapping them to `(.., K)`; returns
/// `(.., A)`.
pub fn dfo_minimize_drawn(
    draws: DfoDraws,
    bounds: &Bounds,
    cfg: &DfoConfig,
    energy: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let DfoDraws {
            init,
            uniforms,
            noise,
        } = draws;
        let rows = init.size()[init.dim() - 2];
        let mut samples = init;
        let mut std = cfg.noise_scale;
        for (u, n) in uniforms.iter().zip(&noise) {
            let probs = (-energy(&samples) / cfg.temperature).softmax(-1, Kind::Float);
            samples = resample(&samples, &probs, u, rows);
            samples = bounds.clip(&(&samples + n * std));
            std *= cfg.noise_shrink;
        }
        let best = energy(&samples).argmin(-1, true);
        let index = best.unsqueeze(-1).expand(
            best.size()
                .into_iter()
                .chain([samples.size()[samples.dim() - 1]])
                .collect::<Vec<_>>(),
            false,
        );
        samples.gather(-2, &index, false).squeeze_dim(-2)
    })
}

/// Rows of `samples` `(.., K, A)` drawn with replacement by `probs` `(.., K)`: row i where
/// the cumulative probability first reaches the uniform.
pub(super) fn resample(samples: &Tensor, probs: &Tensor, uniforms: &Tensor, rows: i64) -> Tensor {
    let cdf = probs.cumsum(-1, Kind::Float);
    let picked = uniforms
        .contiguous()
        .searchsorted(&cdf, false, false, "left", None::<Tensor>)
        .clamp_max(rows - 1);
    samples.gather(-2, &picked.unsqueeze(-1).expand_as(samples), false)
}
