//! Autoregressive energy models and their derivative-free optimizer (IBC appendix B.2,
//! Algorithm 2): one energy model per action dimension j, `E_j(x, y_1..y_j)`, trained with
//! InfoNCE on counter-examples of dimension j alone (the true earlier dimensions kept), and
//! acting one dimension at a time: DFO over `y_j` given the dimensions already chosen.
//!
//! The m models share one shape, so they are stored and run as one batched model (a
//! [`PackedEbm`] of m members): every model takes all m action values, and model j sees
//! the ones after j as zeros (its weights for them never receive a gradient). Tensor names
//! are those of the solo model with a leading dimension of size m: `projection.weight`
//! `[m, hidden, S*D + m]`, `projection.bias` `[m, hidden]`, `blocks.i.fc{1,2}.{weight,bias}`
//! `[m, ...]`, `energy_projection.weight` `[m, 1, hidden]`, `energy_projection.bias`
//! `[m, 1]`.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::{Bounds, DfoConfig, EbmLoss, EbmLossConfig, PackedEbm};
use crate::policy::{NetConfig, Precision};

#[derive(Debug)]
pub struct AutoregressiveEbm {
    cfg: NetConfig,
    models: PackedEbm,
}

impl AutoregressiveEbm {
    /// m = `cfg.action_dim` models, each initialised as PyTorch's `nn.Linear` would.
    pub fn new(p: &nn::Path, cfg: NetConfig) -> Self {
        let m = cfg.action_dim;
        let inputs = cfg.obs_seq_len * cfg.obs_dim + m;
        let mut named = Vec::new();
        let mut linear = |name: &str, fan_in: i64, out: i64| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let init = Init::Uniform {
                lo: -bound,
                up: bound,
            };
            let layer = name.split('.').fold(p.clone(), |path, part| path / part);
            named.push((
                format!("{name}.weight"),
                layer.var("weight", &[m, out, fan_in], init),
            ));
            named.push((format!("{name}.bias"), layer.var("bias", &[m, out], init)));
        };
        linear("projection", inputs, cfg.hidden);
        for i in 0..cfg.blocks {
            linear(&format!("blocks.{i}.fc1"), cfg.hidden, cfg.hidden);
            linear(&format!("blocks.{i}.fc2"), cfg.hidden, cfg.hidden);
        }
        linear("energy_projection", cfg.hidden, 1);
        let models = PackedEbm::from_stacked(&cfg, Precision::Fp32, &named)
            .expect("the autoregressive models are a pack of the solo network");
        Self { cfg, models }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    fn dims(&self) -> i64 {
        self.cfg.action_dim
    }

    /// `[m, 1, 1, m]`: model j keeps the action values up to j.
    fn prefix_mask(&self, device: tch::Device) -> Tensor {
        let m = self.dims();
        Tensor::ones([m, m], (Kind::Float, device))
            .tril(0)
            .view([m, 1, 1, m])
    }

    /// Energies `[m, B, N]` of every model for full action vectors `candidates`
    /// `[m, B, N, m]` (model j's row j), given observation windows `(B, S, D)`: model j
    /// sees the candidate's values up to j only.
    pub fn energies(&self, obs: &Tensor, candidates: &Tensor) -> Tensor {
        let m = self.dims();
        let context = self
            .models
            .observation_context(&obs.unsqueeze(0).expand([m, -1, -1, -1], false));
        self.models
            .energies(&context, &(candidates * self.prefix_mask(obs.device())))
    }

    /// InfoNCE of every model at once: `obs` `(B, S, D)`, demonstrated `actions` `(B, m)`,
    /// counter-examples `negatives` `(m, B, N)` (model j's values of dimension j, the true
    /// values of the dimensions before it kept). Returns the per-model losses `[m]` and
    /// energies `[m, B, N + 1]` (positive last).
    pub fn losses(
        &self,
        obs: &Tensor,
        actions: &Tensor,
        negatives: &Tensor,
        temperature: f64,
    ) -> (Tensor, Tensor) {
        let (m, b, n) = (self.dims(), actions.size()[0], negatives.size()[2]);
        let device = actions.device();
        // Model j's candidates: the true values before j, the value under test at j (the
        // mask zeroes those after j).
        let truth = actions.view([1, b, 1, m]).expand([m, b, n + 1, m], false);
        let tested = Tensor::cat(
            &[
                negatives.shallow_clone(),
                actions.transpose(0, 1).unsqueeze(2),
            ],
            2,
        )
        .unsqueeze(3); // [m, B, N + 1, 1]
        let own = Tensor::eye(m, (Kind::Float, device)).view([m, 1, 1, m]);
        let candidates = &truth * (1.0 - &own) + &tested * &own;
        let energies = self.energies(obs, &candidates);
        let losses = -(-&energies / temperature)
            .log_softmax(-1, Kind::Float)
            .select(2, n)
            .mean_dim(1, false, Kind::Float);
        (losses, energies)
    }

    /// Actions `(B, m)` chosen one dimension at a time for observation windows `(B, S, D)`:
    /// DFO over dimension j given the dimensions already chosen.
    /// Energies are computed in `precision` (bf16 or fp32 products; sampling stays fp32).
    pub fn infer(
        &self,
        obs: &Tensor,
        bounds: &Bounds,
        cfg: &DfoConfig,
        chunk_rows: i64,
        precision: Precision,
    ) -> Tensor {
        let m = self.dims();
        let models = self.models.with_precision(precision);
        tch::no_grad(|| {
            let context =
                models.observation_context(&obs.unsqueeze(0).expand([m, -1, -1, -1], false));
            let chosen = Tensor::zeros([obs.size()[0], m], (Kind::Float, obs.device()));
            for j in 0..m {
                let model = models.member(j);
                let ctx = context.narrow(0, j, 1);
                let energy = |prefix: &Tensor, values: &Tensor| {
                    let (b, n) = (values.size()[0], values.size()[1]);
                    let candidates = prefix.unsqueeze(1).expand([b, n, m], false).copy();
                    candidates.narrow(2, j, 1).copy_(&values.unsqueeze(2));
                    let rows = chunk_rows.max(n);
                    crate::policy::in_row_chunks(&ctx.squeeze_dim(0), &candidates, rows, |c, a| {
                        model
                            .energies(&c.unsqueeze(0), &a.unsqueeze(0))
                            .squeeze_dim(0)
                    })
                };
                let low = bounds.low.get(j).double_value(&[]);
                let high = bounds.high.get(j).double_value(&[]);
                let best = dfo_dimension(&chosen, (low, high), cfg, energy);
                chosen.narrow(1, j, 1).copy_(&best.unsqueeze(1));
            }
            chosen
        })
    }
}

/// The autoregressive objective of one batch: per-model InfoNCE against `count`
/// counter-examples of its own dimension, uniform in that dimension's bounds (IBC B.2:
/// InfoNCE alone, no gradient penalty). The total is the sum over models, so each model
/// gets the gradient of its own loss. Counter-examples are drawn as `[m, B, count]`.
pub fn ar_ebm_loss(
    model: &AutoregressiveEbm,
    obs: &Tensor,
    actions: &Tensor,
    bounds: &Bounds,
    cfg: &EbmLossConfig,
) -> EbmLoss {
    let (m, b, n) = (model.dims(), actions.size()[0], cfg.negatives.count);
    let u = Tensor::rand([m, b, n], (Kind::Float, actions.device()));
    let low = bounds.low.view([m, 1, 1]);
    let negatives = &low + u * (bounds.high.view([m, 1, 1]) - &low);
    let (losses, energies) = model.losses(obs, actions, &negatives, cfg.temperature);
    let nce = losses.sum(Kind::Float);
    EbmLoss {
        total: nce.shallow_clone(),
        energy_positive: energies.select(2, n).mean(Kind::Float).detach(),
        energy_negative: energies.narrow(2, 0, n).mean(Kind::Float).detach(),
        info_nce: nce,
        grad_penalty: Tensor::zeros([], (Kind::Float, actions.device())),
    }
}

/// DFO over one dimension: `samples` values uniform in `bounds`, `iters` rounds of
/// resampling by `softmax(-E)` plus shrinking noise, then the lowest-energy value, per
/// problem; `energy(prefix, values)` maps values `(B, N)` to energies `(B, N)`.
pub fn dfo_dimension(
    prefix: &Tensor,
    (low, high): (f64, f64),
    cfg: &DfoConfig,
    energy: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Tensor {
    let b = prefix.size()[0];
    let n = cfg.samples;
    let mut values = Tensor::rand([b, n], (Kind::Float, prefix.device())) * (high - low) + low;
    let mut noise = cfg.noise_scale;
    for _ in 0..cfg.iters {
        let probs = (-energy(prefix, &values) / cfg.temperature).softmax(-1, Kind::Float);
        let picked = probs.multinomial(n, true);
        values = values.gather(1, &picked, false);
        values = (&values + values.randn_like() * noise).clamp(low, high);
        noise *= cfg.noise_shrink;
    }
    let best = energy(prefix, &values).argmin(-1, true);
    values.gather(1, &best, false).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A separable energy whose minimum in dimension j depends on the dimensions before
    /// it: `E_j = (y_j - c_j(y_<j))^2` with `c_0 = 0.3` and `c_j = -y_{j-1} / 2`, so the
    /// optimum is `(0.3, -0.15, 0.075)`.
    #[test]
    fn one_dimension_at_a_time_finds_a_prefix_dependent_optimum() {
        tch::manual_seed(0);
        let cfg = DfoConfig {
            samples: 2048,
            ..Default::default()
        };
        let m = 3;
        let chosen = Tensor::zeros([4, m], (Kind::Float, tch::Device::Cpu));
        for j in 0..m {
            let energy = |prefix: &Tensor, values: &Tensor| {
                let target = if j == 0 {
                    Tensor::full([prefix.size()[0], 1], 0.3, (Kind::Float, tch::Device::Cpu))
                } else {
                    prefix.narrow(1, j - 1, 1) * -0.5
                };
                (values - target).square()
            };
            let best = dfo_dimension(&chosen, (-1.0, 1.0), &cfg, energy);
            chosen.narrow(1, j, 1).copy_(&best.unsqueeze(1));
        }
        let expected = Tensor::from_slice(&[0.3f32, -0.15, 0.075]).view([1, 3]);
        let err = (&chosen - expected).abs().max().double_value(&[]);
        assert!(err < 0.01, "{chosen}");
    }
}
