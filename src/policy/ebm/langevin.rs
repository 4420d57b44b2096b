//! Langevin dynamics (IBC's ULA): counter-examples for training, and inference.
//!
//! `a <- clip(a - clip(s_i (g * dE/da + n * N(0, 1)), ±c), bounds)` with IBC's polynomial
//! step size `s_i = (s_0 - s_end) (1 - i / (K - 1))^p + s_end`, delta clip
//! `c = delta_clip * (high - low) / 2`, and samples detached after every step.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::fused_steps;
use crate::policy::runtime_kernels;

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
        let update = Update::new(bounds, clip, coefficients, &init);
        let mut actions = init.detach();
        for i in 0..steps {
            let g = grad(&actions);
            actions = update.step(i, &actions, &g, &noise(i, &actions));
        }
        actions
    })
}

/// The update of a step's samples: ATen's five passes, or on a GPU one kernel of our own
/// ([`runtime_kernels::langevin_update`]) once it has agreed with them
/// ([`fused_steps::UPDATE`]): a small pack's step is a chain of short kernels, where each
/// launch is a good part of its time.
struct Update<'a> {
    bounds: &'a Bounds,
    clip: Tensor,
    neg_clip: Tensor,
    coefficients: &'a StepCoefficients,
    /// What the kernel needs, where it can run.
    fused: Option<FusedUpdate>,
}

/// The kernel's per-member tables, `[K, A]` each (the clip and the bounds), and the
/// chain's configuration for [`fused_steps::UPDATE`]: K, samples per member, A.
struct FusedUpdate {
    tables: [Tensor; 3],
    key: [i64; 3],
}

impl<'a> Update<'a> {
    /// The update within `bounds` for chains shaped like `init` (`[K, .., A]` for a pack of
    /// K, whose coefficients are `[steps, K, ..]`).
    fn new(
        bounds: &'a Bounds,
        clip: Tensor,
        coefficients: &'a StepCoefficients,
        init: &Tensor,
    ) -> Self {
        let fusable = init.device().is_cuda()
            && init.kind() == Kind::Float
            && init.numel() > 0
            && runtime_kernels::available();
        let fused = fusable
            .then(|| FusedUpdate::new(&clip, bounds, coefficients, init))
            .flatten();
        Self {
            bounds,
            neg_clip: -&clip,
            clip,
            coefficients,
            fused,
        }
    }

    /// The samples after step `i` from `actions` with gradients `g` and noise `noise`.
    fn step(&self, i: usize, actions: &Tensor, g: &Tensor, noise: &Tensor) -> Tensor {
        let coefficients = [
            self.coefficients.grad.get(i as i64),
            self.coefficients.noise.get(i as i64),
        ];
        let eager = || {
            let [g_coef, n_coef] = &coefficients;
            let delta = (noise * n_coef)
                .addcmul(g, g_coef)
                .clamp_tensor(Some(&self.neg_clip), Some(&self.clip));
            self.bounds.clip(&(actions - delta))
        };
        let Some(FusedUpdate { tables, key }) = &self.fused else {
            return eager();
        };
        if g.kind() != Kind::Float || noise.kind() != Kind::Float {
            return eager();
        }
        let [clip, low, high] = tables;
        fused_steps::UPDATE.compute(
            key,
            eager,
            || {
                runtime_kernels::langevin_update(
                    &actions.contiguous(),
                    &g.contiguous(),
                    noise,
                    [&coefficients[0], &coefficients[1]],
                    [clip, low, high],
                )
            },
            |eager, fused| same_moves(actions, eager, fused),
        )
    }
}

impl FusedUpdate {
    /// The tables of `clip` and `bounds` (a pack's `[K, 1, 1, A]`, a single chain's `[A]`)
    /// for chains shaped like `init`, or `None` if they are not of those shapes.
    fn new(
        clip: &Tensor,
        bounds: &Bounds,
        coefficients: &StepCoefficients,
        init: &Tensor,
    ) -> Option<Self> {
        // The coefficients are `[steps, ..per_step]`: one chain's per step `[]`, a pack's
        // `[K, 1, 1, 1]`.
        let members: i64 = coefficients.grad.size()[1..].iter().product();
        let actions = *init.size().last()?;
        let table = |t: &Tensor| {
            let rows = t.numel() as i64 / actions;
            let fits = t.kind() == Kind::Float
                && t.numel() as i64 % actions == 0
                && (rows == 1 || rows == members);
            fits.then(|| {
                t.reshape([-1, actions])
                    .expand([members, actions], false)
                    .contiguous()
            })
        };
        Some(Self {
            tables: [table(clip)?, table(&bounds.low)?, table(&bounds.high)?],
            key: [members, init.numel() as i64 / members, actions],
        })
    }
}

/// Whether the fused update's samples `fused` agree with the eager `eager`, both from
/// `before`: their moves are compared, because the samples themselves barely change at a
/// chain's late steps (step sizes ~1e-5), where an update that did nothing would pass.
fn same_moves(before: &Tensor, eager: &Tensor, fused: &Tensor) -> anyhow::Result<()> {
    fused_steps::agree(&(eager - before), &(fused - before))
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    /// A chain on a quadratic energy `|a - t|²` (gradient `2 (a - t)`, a contraction, so
    /// rounding does not grow) from uniform samples with drawn noise, on `device`.
    fn quadratic_chain(device: Device) -> Tensor {
        tch::manual_seed(7);
        let (b, n, a) = (64, 16, 3);
        let init = Tensor::rand([b, n, a], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let noise = Tensor::randn([100, b, n, a], (Kind::Float, Device::Cpu));
        let target = Tensor::from_slice(&[0.3f32, -0.2, 0.9]).to_device(device);
        let bounds = Bounds::new(&[-1.0, -1.0, -0.5], &[1.0, 1.0, 0.5], device);
        langevin_with_noise(
            init.to_device(device),
            &bounds,
            &LangevinConfig::default(),
            &noise.to_device(device),
            |x| (x - &target) * 2.0,
        )
    }

    #[test]
    fn a_fused_update_that_does_not_move_the_samples_is_refused_where_comparing_them_would_pass() {
        tch::manual_seed(3);
        let before = Tensor::rand([4, 64, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        // A late step: moves of ~1e-5.
        let moves = Tensor::randn([4, 64, 2], (Kind::Float, Device::Cpu)) * 1e-5;
        let eager = &before - &moves;
        assert!(
            fused_steps::agree(&eager, &before).is_ok(),
            "the samples alone cannot tell a no-op from the update"
        );
        assert!(same_moves(&before, &eager, &before.copy()).is_err());
        // Rounding-sized differences (1e-3 of each move) agree.
        let rounded = &eager + &moves * 1e-3;
        assert!(same_moves(&before, &eager, &rounded).is_ok());
        assert!(same_moves(&before, &eager, &(&before - &moves * -1.0)).is_err());
    }

    #[test]
    fn a_chain_on_a_quadratic_energy_settles_at_its_minimum_within_the_bounds() {
        let samples = quadratic_chain(Device::Cpu);
        // The third coordinate's minimum (0.9) lies past its bound (0.5): it stops there.
        let mean = samples.mean_dim(&[0i64, 1][..], false, Kind::Float);
        let want = Tensor::from_slice(&[0.3f32, -0.2, 0.5]);
        // From a mean 0.2 to 0.5 away; what is left is the noise of its last steps and
        // the offset their shrinking step sizes no longer remove (0.017 with this seed).
        let error = (mean - want).abs().max().double_value(&[]);
        assert!(error < 0.05, "chain mean off the minimum by {error}");
        assert!(samples.select(2, 2).le(0.5).all().int64_value(&[]) == 1);
    }

    /// On a GPU the chain comes to use the fused update (after its checks) and ends where
    /// the CPU's eager chain ends, to rounding.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_the_chain_uses_the_fused_update_and_agrees_with_the_cpu() {
        assert!(tch::Cuda::is_available(), "no CUDA device");
        let gpu = quadratic_chain(Device::Cuda(0));
        assert!(
            fused_steps::update_in_use(),
            "the chain did not come to use the fused update (its warning says why)"
        );
        let cpu = quadratic_chain(Device::Cpu);
        let error = (gpu.to_device(Device::Cpu) - cpu)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            error < 1e-4,
            "GPU chain differs from the CPU's by {error:.3e}"
        );
    }
}
