//! The implicit (energy-based) policy: SequenceEBM trained with InfoNCE over counter-examples
//! plus a gradient penalty, acting by DFO or Langevin minimisation of the energy.

mod autoregressive;
mod dfo;
mod langevin;
mod loss;
mod model;
mod packed;

pub use autoregressive::{ar_ebm_loss, dfo_dimension, AutoregressiveEbm};
pub use dfo::{dfo_minimize, DfoConfig};
pub use langevin::{langevin, langevin_with_noise, packed_langevin, Bounds, LangevinConfig};
pub use loss::{gradient_penalty, info_nce, GradNorm, GradPenaltyConfig};
pub use model::SequenceEbm;
pub use packed::{packable, packed_ebm_loss, PackedEbm, PackedLoss};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How counter-examples are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeKind {
    /// Uniform in the sampling bounds (IBC's DFO-trained variant).
    Uniform,
    /// Uniform, then refined by Langevin on the current energy (IBC's Langevin variant).
    Langevin,
}

/// Counter-examples per positive and how they are made (spec table `train.negatives`;
/// the Langevin parameters sit beside `kind` and `count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NegativesConfig {
    pub kind: NegativeKind,
    pub count: i64,
    #[serde(flatten)]
    pub langevin: LangevinConfig,
}

impl Default for NegativesConfig {
    fn default() -> Self {
        Self {
            kind: NegativeKind::Langevin,
            count: 8,
            langevin: LangevinConfig::default(),
        }
    }
}

/// The EBM objective's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EbmLossConfig {
    pub temperature: f64,
    pub negatives: NegativesConfig,
    pub grad_penalty: GradPenaltyConfig,
}

impl Default for EbmLossConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            negatives: NegativesConfig::default(),
            grad_penalty: GradPenaltyConfig::default(),
        }
    }
}

/// The loss of one batch and its parts (scalars, still attached to the graph).
#[derive(Debug)]
pub struct EbmLoss {
    pub total: Tensor,
    pub info_nce: Tensor,
    pub grad_penalty: Tensor,
    /// Mean energy of the demonstrated actions.
    pub energy_positive: Tensor,
    /// Mean energy of the counter-examples.
    pub energy_negative: Tensor,
}

/// Counter-examples `(B, count, A)` for observation windows `obs` `(B, S, D)`. Their random
/// draws come in a fixed order, uniform starts then (for Langevin) the noise of every step,
/// which a pack's member makes in the same order ([`draw_counter_examples`]).
pub fn counter_examples(
    model: &SequenceEbm,
    context: &Tensor,
    bounds: &Bounds,
    cfg: &NegativesConfig,
) -> Tensor {
    let batch = context.size()[0];
    let (init, noise) = draw_counter_examples(batch, model.config().action_dim, bounds, cfg);
    match noise {
        None => init,
        Some(noise) => {
            let context = context.detach();
            langevin_with_noise(init, bounds, &cfg.langevin, &noise, |a| {
                model.action_gradient(&context, a)
            })
        }
    }
}

/// The random draws of one batch's counter-examples: uniform starts `(B, count, A)` and,
/// for Langevin, the noise of all its steps `(steps, B, count, A)`.
pub fn draw_counter_examples(
    batch: i64,
    action_dim: i64,
    bounds: &Bounds,
    cfg: &NegativesConfig,
) -> (Tensor, Option<Tensor>) {
    let init = bounds.uniform(&[batch, cfg.count, action_dim]);
    let noise = (cfg.kind == NegativeKind::Langevin).then(|| {
        Tensor::randn(
            [cfg.langevin.steps as i64, batch, cfg.count, action_dim],
            (Kind::Float, init.device()),
        )
    });
    (init, noise)
}

/// InfoNCE over `[counter-examples..., demonstration]` plus the gradient penalty at all of
/// them, from one forward pass. `obs` `(B, S, D)`, `actions` `(B, A)`, both normalized.
pub fn ebm_loss(
    model: &SequenceEbm,
    obs: &Tensor,
    actions: &Tensor,
    bounds: &Bounds,
    cfg: &EbmLossConfig,
) -> EbmLoss {
    let context = model.observation_context(obs);
    let negatives = counter_examples(model, &context, bounds, &cfg.negatives);
    let penalise = cfg.grad_penalty.enabled;
    let candidates = Tensor::cat(&[negatives, actions.unsqueeze(1)], 1)
        .detach()
        .set_requires_grad(penalise);
    let energies = model.energies_with_context(&context, &candidates, true);
    let nce = info_nce(&energies, cfg.temperature);
    let penalty = if penalise {
        let grad = Tensor::run_backward(&[energies.sum(None)], &[&candidates], true, true);
        gradient_penalty(&grad[0], &cfg.grad_penalty)
    } else {
        Tensor::zeros([], (Kind::Float, obs.device()))
    };
    let count = cfg.negatives.count;
    EbmLoss {
        total: &nce + &penalty,
        energy_positive: energies.select(1, count).mean(Kind::Float).detach(),
        energy_negative: energies.narrow(1, 0, count).mean(Kind::Float).detach(),
        info_nce: nce,
        grad_penalty: penalty,
    }
}
