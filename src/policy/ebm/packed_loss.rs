//! The loss of a pack of energy models: every member's InfoNCE plus gradient penalty in
//! one batched pass, with each member's own settings and counter-examples.

use tch::{Kind, Tensor};

use super::negatives::{self, CounterExampleDraws, RefinementDraws};
use super::{Bounds, EbmLossConfig, GradNorm, LangevinConfig, PackedChains, PackedEbm};
use crate::policy::Precision;

/// Per-member losses of a pack `[K]` (fp32), and their sum to differentiate (each member's
/// weights get exactly their own loss's gradient).
#[derive(Debug)]
pub struct PackedLoss {
    pub total: Tensor,
    pub info_nce: Tensor,
    pub grad_penalty: Tensor,
    pub energy_positive: Tensor,
    pub energy_negative: Tensor,
}

/// The pack's objective: each member's InfoNCE plus gradient penalty, with the members'
/// settings on the device and their Langevin chains, made once per pack (an upload from
/// the host at every step would wait for the device's queue to drain).
pub struct PackedObjective {
    cfgs: Vec<EbmLossConfig>,
    /// Sampling bounds `[K, 1, 1, A]`.
    bounds: Bounds,
    /// Per member: `[K, 1, 1]`, `[K, 1, 1]`, `[K]`.
    temperature: Tensor,
    margin: Tensor,
    weight: Tensor,
    chains: PackedChains,
}

impl PackedObjective {
    /// The objective of members with settings `cfgs` sampling within `bounds`
    /// `[K, 1, 1, A]`; their Langevin chains replayed as a CUDA graph where `cuda_graphs`
    /// (see [`PackedChains`]).
    pub fn new(cfgs: Vec<EbmLossConfig>, bounds: &Bounds, cuda_graphs: bool) -> Self {
        let device = bounds.low.device();
        let per_member = |f: &dyn Fn(&EbmLossConfig) -> f64, dims: usize| {
            let values: Vec<f32> = cfgs.iter().map(|c| f(c) as f32).collect();
            let mut shape = vec![1i64; dims];
            shape[0] = values.len() as i64;
            Tensor::from_slice(&values)
                .to_device(device)
                .view(shape.as_slice())
        };
        let langevin: Vec<LangevinConfig> =
            cfgs.iter().map(|c| c.negatives.langevin.clone()).collect();
        Self {
            temperature: per_member(&|c| c.temperature, 3),
            margin: per_member(&|c| c.grad_penalty.margin, 3),
            weight: per_member(&|c| c.grad_penalty.weight, 1),
            chains: PackedChains::new(&langevin, bounds, cuda_graphs),
            bounds: Bounds {
                low: bounds.low.shallow_clone(),
                high: bounds.high.shallow_clone(),
            },
            cfgs,
        }
    }

    /// Whether the Langevin chains may be replayed as a CUDA graph (see [`PackedChains`]).
    pub fn allow_cuda_graphs(&mut self, on: bool) {
        self.chains.allow_cuda_graphs(on);
    }

    /// Whether the Langevin chains are now replayed from a CUDA graph.
    pub fn replaying_chains(&self) -> bool {
        self.chains.replaying()
    }

    /// The pack's losses: `obs` `[K, B, S, D]`, `actions` `[K, B, A]`, the members'
    /// counter-example draws stacked (each drawn in its solo order). The same arithmetic
    /// as `ebm_loss` for each member.
    pub fn loss(
        &mut self,
        model: &PackedEbm,
        obs: &Tensor,
        actions: &Tensor,
        draws: CounterExampleDraws,
    ) -> PackedLoss {
        let (cfgs, bounds, chains) = (&self.cfgs, &self.bounds, &mut self.chains);
        let (temperature, margin, weight) = (&self.temperature, &self.margin, &self.weight);
        let device = obs.device();
        let context = model.observation_context(obs);
        let negatives = {
            let ctx = context.detach();
            let sampler = model.frozen();
            let first = &cfgs[0].negatives;
            negatives::refine(draws, first, |start, refinement| match refinement {
                RefinementDraws::None => unreachable!("refine calls back only with draws"),
                RefinementDraws::Langevin { noise } => chains.run(&sampler, obs, start, noise),
                RefinementDraws::Dfo { uniforms, noise } => negatives::dfo_refine(
                    start,
                    bounds,
                    first.dfo_iters,
                    first.dfo_noise_scale,
                    |i| {
                        let noise = (i > 0).then(|| noise.select(1, i as i64 - 1));
                        (uniforms.select(1, i as i64), noise)
                    },
                    |a| sampler.energies(&ctx, a) / -temperature,
                ),
            })
        };
        let penalise = cfgs[0].grad_penalty.enabled;
        let candidates = Tensor::cat(&[negatives, actions.unsqueeze(2)], 2)
            .detach()
            .set_requires_grad(penalise);
        // The loss's energies in fp32 products whatever the pack's precision (TF32 where the
        // process allows it, as `Precision::apply` sets it): a bf16 pack searches for its
        // counter-examples in bf16, and only there (README, Precision).
        let energies = model
            .with_precision(Precision::Fp32)
            .energies(&context, &candidates);
        let count = cfgs[0].negatives.count;
        // InfoNCE per member: the positive sits in the last column.
        let logits = -&energies / temperature;
        let info_nce = -logits
            .log_softmax(-1, Kind::Float)
            .select(2, count)
            .mean_dim(1, false, Kind::Float);
        let grad_penalty = if penalise {
            let grad = Tensor::run_backward(&[energies.sum(None)], &[&candidates], true, true);
            let p = &cfgs[0].grad_penalty;
            let norms = match p.norm {
                GradNorm::Inf => grad[0].abs().amax(-1, false),
                GradNorm::L2 => grad[0]
                    .square()
                    .sum_dim_intlist(-1, false, Kind::Float)
                    .sqrt(),
            };
            let excess = (norms - margin).clamp_min(0.0);
            let excess = if p.square { excess.square() } else { excess };
            excess.mean_dim([1i64, 2].as_slice(), false, Kind::Float) * weight
        } else {
            Tensor::zeros([cfgs.len() as i64], (Kind::Float, device))
        };
        let per_member_loss = &info_nce + &grad_penalty;
        PackedLoss {
            total: per_member_loss.sum(Kind::Float),
            energy_positive: energies
                .select(2, count)
                .mean_dim(1, false, Kind::Float)
                .detach(),
            energy_negative: energies
                .narrow(2, 0, count)
                .mean_dim([1i64, 2].as_slice(), false, Kind::Float)
                .detach(),
            info_nce,
            grad_penalty,
        }
    }
}
