//! InfoNCE over `[negatives..., positive]` and the gradient penalty on `dE/da`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// InfoNCE: cross-entropy of `softmax(-E / temperature)` against the positive, which sits in
/// the last column of `energies` `(B, negatives + 1)`. Returns the batch mean.
pub fn info_nce(energies: &Tensor, temperature: f64) -> Tensor {
    let logits = -energies / temperature;
    let log_probs = logits.log_softmax(-1, Kind::Float);
    -log_probs.select(1, -1).mean(Kind::Float)
}

/// Norm of `dE/da` that the penalty constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradNorm {
    Inf,
    L2,
}

/// `weight * mean(max(0, ||dE/da|| - margin)^p)`, `p = 2` if `square`, at every sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradPenaltyConfig {
    pub enabled: bool,
    pub norm: GradNorm,
    pub margin: f64,
    pub square: bool,
    pub weight: f64,
}

impl Default for GradPenaltyConfig {
    /// IBC's `grad_penalty`: inf-norm, margin 1, squared, weight 1.
    fn default() -> Self {
        Self {
            enabled: true,
            norm: GradNorm::Inf,
            margin: 1.0,
            square: true,
            weight: 1.0,
        }
    }
}

/// The penalty for gradients `(B, N, A)` (built with `create_graph` so it trains the weights).
pub fn gradient_penalty(grad: &Tensor, cfg: &GradPenaltyConfig) -> Tensor {
    let norms = match cfg.norm {
        GradNorm::Inf => grad.abs().amax(-1, false),
        GradNorm::L2 => grad.square().sum_dim_intlist(-1, false, Kind::Float).sqrt(),
    };
    let excess = (norms - cfg.margin).clamp_min(0.0);
    let excess = if cfg.square { excess.square() } else { excess };
    excess.mean(Kind::Float) * cfg.weight
}
