//! The implicit (energy-based) policy: SequenceEBM trained with InfoNCE over counter-examples
//! plus a gradient penalty, acting by DFO or Langevin minimisation of the energy.

mod autoregressive;
mod dfo;
pub mod fused_steps;
mod input_gradient;
mod langevin;
mod loss;
mod model;
mod negatives;
mod packed;
mod packed_chains;
mod packed_loss;

pub use autoregressive::{ar_ebm_loss, dfo_dimension, AutoregressiveEbm};
pub use dfo::{dfo_minimize, dfo_minimize_drawn, DfoConfig, DfoDraws};
pub use input_gradient::InputGradient;
pub use langevin::{langevin, langevin_with_noise, Bounds, LangevinConfig};
pub use loss::{gradient_penalty, info_nce, GradNorm, GradPenaltyConfig};
pub use model::SequenceEbm;
pub use negatives::{
    counter_examples, dfo_refine, CounterExampleDraws, NegativeKind, NegativesConfig,
    RefinementDraws,
};
pub use packed::{packable, ActingPack, PackedEbm};
pub use packed_chains::PackedChains;
pub use packed_loss::{PackedLoss, PackedObjective};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

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
    let negatives = counter_examples(
        model,
        obs,
        &context,
        bounds,
        &cfg.negatives,
        cfg.temperature,
    );
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
