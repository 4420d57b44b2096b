//! Langevin dynamics (IBC's ULA): counter-examples for training, and inference.
//!
//! `a <- clip(a - clip(s_i (g * dE/da + n * N(0, 1)), ±c), bounds)` with IBC's polynomial
//! step size `s_i = (s_0 - s_end) (1 - i / (K - 1))^p + s_end`, delta clip
//! `c = delta_clip * (high - low) / 2`, and samples detached after every step.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Parameters of the sampler (IBC defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LangevinConfig {
    pub steps: usize,
    pub step_size_init: f64,
    pub step_size_final: f64,
    pub step_size_power: f64,
    /// Scale of `dE/da` in the update (IBC: 0.5).
    pub grad_scale: f64,
    /// Scale of the Gaussian noise (IBC: 1; its std is `step_size x noise_scale`).
    pub noise_scale: f64,
    /// Largest move per step, as a fraction of half the bounds' width.
    pub delta_clip: f64,
}

impl Default for LangevinConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            step_size_init: 0.1,
            step_size_final: 1e-5,
            step_size_power: 2.0,
            grad_scale: 0.5,
            noise_scale: 1.0,
            delta_clip: 0.1,
        }
    }
}

impl LangevinConfig {
    /// Step size of step `i` of `steps` (IBC's `PolynomialSchedule`).
    pub fn step_size(&self, i: usize) -> f64 {
        let progress = if self.steps > 1 {
            i as f64 / (self.steps - 1) as f64
        } else {
            0.0
        };
        (self.step_size_init - self.step_size_final) * (1.0 - progress).powf(self.step_size_power)
            + self.step_size_final
    }
}

/// Action bounds `(A,)` on the samples' device.
#[derive(Debug)]
pub struct Bounds {
    pub low: Tensor,
    pub high: Tensor,
}

impl Bounds {
    pub fn new(low: &[f32], high: &[f32], device: tch::Device) -> Self {
        Self {
            low: Tensor::from_slice(low).to_device(device),
            high: Tensor::from_slice(high).to_device(device),
        }
    }

    /// Uniform samples of shape `[.., A]` within the bounds.
    pub fn uniform(&self, shape: &[i64]) -> Tensor {
        let u = Tensor::rand(shape, (tch::Kind::Float, self.low.device()));
        &self.low + u * (&self.high - &self.low)
    }

    pub fn clip(&self, actions: &Tensor) -> Tensor {
        actions.clamp_tensor(Some(&self.low), Some(&self.high))
    }
}

/// Runs Langevin from `init` `(B, N, A)` using `grad` (`dE/da` at given actions).
pub fn langevin(
    init: Tensor,
    bounds: &Bounds,
    cfg: &LangevinConfig,
    grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let clip = (&bounds.high - &bounds.low) * (0.5 * cfg.delta_clip);
        let neg_clip = -&clip;
        let mut actions = init.detach();
        for i in 0..cfg.steps {
            let step = cfg.step_size(i);
            let g = grad(&actions);
            let noise = actions.randn_like();
            let delta = (g * (cfg.grad_scale * step) + noise * (cfg.noise_scale * step))
                .clamp_tensor(Some(&neg_clip), Some(&clip));
            actions = bounds.clip(&(actions - delta));
        }
        actions
    })
}
