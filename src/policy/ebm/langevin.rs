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

/// Runs Langevin from `init` `(B, N, A)` using `grad` (`dE/da` at given actions), with
/// fresh noise at every step.
pub fn langevin(
    init: Tensor,
    bounds: &Bounds,
    cfg: &LangevinConfig,
    grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    chain(init, bounds, cfg, |_, a| a.randn_like(), grad)
}

/// [`langevin`] with the noise of every step drawn beforehand: `noise` `(steps, B, N, A)`
/// (so a trial's draws do not depend on what else runs with it).
pub fn langevin_with_noise(
    init: Tensor,
    bounds: &Bounds,
    cfg: &LangevinConfig,
    noise: &Tensor,
    grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    chain(init, bounds, cfg, |i, _| noise.get(i as i64), grad)
}

/// The step coefficients `c_g`, `c_n` of every step, `[steps, ..]`: uploaded to the device
/// once per chain, because a host-to-device copy at each step waits for the GPU's queue to
/// drain (one stall per Langevin step).
pub(super) struct StepCoefficients {
    grad: Tensor,
    noise: Tensor,
}

impl StepCoefficients {
    /// `c_g`, `c_n` of each step of each chain in `cfgs` (f32, the same arithmetic as
    /// scalars), shaped `[steps, ..per_step]`: `per_step` is `[]` for one chain, `[K, 1, 1, 1]`
    /// for a pack's K chains.
    pub(super) fn new(cfgs: &[LangevinConfig], device: tch::Device, per_step: &[i64]) -> Self {
        let steps = cfgs[0].steps;
        let shape: Vec<i64> = std::iter::once(steps as i64)
            .chain(per_step.iter().copied())
            .collect();
        let table = |scale: fn(&LangevinConfig) -> f64| {
            let values: Vec<f32> = (0..steps)
                .flat_map(|i| cfgs.iter().map(move |c| (scale(c) * c.step_size(i)) as f32))
                .collect();
            Tensor::from_slice(&values)
                .to_device(device)
                .view(shape.as_slice())
        };
        Self {
            grad: table(|c| c.grad_scale),
            noise: table(|c| c.noise_scale),
        }
    }
}

fn chain(
    init: Tensor,
    bounds: &Bounds,
    cfg: &LangevinConfig,
    noise: impl Fn(usize, &Tensor) -> Tensor,
    grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let half_width = (&bounds.high - &bounds.low) * (0.5 * cfg.delta_clip);
    let coefficients = StepCoefficients::new(std::slice::from_ref(cfg), init.device(), &[]);
    chain_with_clip(
        init,
        bounds,
        cfg.steps,
        half_width,
        &coefficients,
        noise,
        grad,
    )
}

/// `a <- clip(a - clip(c_g g + c_n noise, ±clip), bounds)` for `steps` steps, detached.
pub(super) fn chain_with_clip(
    init: Tensor,
    bounds: &Bounds,
    steps: usize,
    clip: Tensor,
    coefficients: &StepCoefficients,
    noise: impl Fn(usize, &Tensor) -> Tensor,
    grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let neg_clip = -&clip;
        let mut actions = init.detach();
        for i in 0..steps {
            let (g_coef, n_coef) = (
                coefficients.grad.get(i as i64),
                coefficients.noise.get(i as i64),
            );
            let g = grad(&actions);
            let delta = (noise(i, &actions) * n_coef)
                .addcmul(&g, &g_coef)
                .clamp_tensor(Some(&neg_clip), Some(&clip));
            actions = bounds.clip(&(actions - delta));
        }
        actions
    })
}
