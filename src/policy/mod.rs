//! Policies: the implicit energy-based policy, its autoregressive form (one energy model per
//! action dimension) and the explicit MSE baseline, chosen by `kind` in the spec.

mod acting;
mod cublas_lt;
pub mod cuda_graph;
pub mod ebm;
mod fused;
mod inference;
pub mod mse;
mod packed_acting;
mod precision;
pub mod resnet;
mod runtime_kernels;

pub use acting::{LoadedPolicy, PolicyView};
pub use inference::{
    in_row_chunks, infer_actions, infer_actions_prepared, InferenceConfig, InferenceKind,
    PreparedEbm,
};
pub use packed_acting::{acting_key, members_per_rollout, PackedPolicies};
pub use precision::Precision;

use serde::{Deserialize, Serialize};
use tch::nn;

pub use resnet::NetConfig;

use ebm::{AutoregressiveEbm, EbmLossConfig, NegativeKind, SequenceEbm};
use mse::MsePolicyNet;

/// Everything that defines a policy's network, objective and way of acting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySpec {
    Ebm {
        net: NetConfig,
        loss: EbmLossConfig,
        inference: InferenceConfig,
    },
    /// One energy model per action dimension, acting by autoregressive DFO (IBC B.2).
    ArEbm {
        net: NetConfig,
        loss: EbmLossConfig,
        inference: InferenceConfig,
    },
    Mse {
        net: NetConfig,
    },
}

impl PolicySpec {
    pub fn kind(&self) -> &'static str {
        match self {
            PolicySpec::Ebm { .. } => "ebm",
            PolicySpec::ArEbm { .. } => "ar_ebm",
            PolicySpec::Mse { .. } => "mse",
        }
    }

    /// Observation window length, observation size and action size the network expects.
    pub fn shapes(&self) -> (i64, i64, i64) {
        let net = self.net();
        (net.obs_seq_len, net.obs_dim, net.action_dim)
    }

    pub fn net(&self) -> &NetConfig {
        match self {
            PolicySpec::Ebm { net, .. }
            | PolicySpec::ArEbm { net, .. }
            | PolicySpec::Mse { net } => net,
        }
    }

    /// Combinations the types allow but no policy can act on; errors name the spec key.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        match self {
            PolicySpec::Ebm { net, inference, .. } => {
                ensure!(
                    inference.kind != InferenceKind::AutoregressiveDfo,
                    "eval.inference: autoregressive_dfo needs policy.kind = \"ar_ebm\" (one \
                     energy model per action dimension)"
                );
                ensure!(
                    !(inference.precision == Precision::Bf16 && net.layer_norm),
                    "eval.precision: bf16 inference runs networks without LayerNorm; set it to \
                     \"fp32\" or \"auto\" (fp32 for this network)"
                );
            }
            PolicySpec::ArEbm {
                net,
                loss,
                inference,
            } => {
                ensure!(
                    inference.kind == InferenceKind::AutoregressiveDfo,
                    "eval.inference: an ar_ebm policy acts by autoregressive_dfo, not {:?}",
                    inference.kind
                );
                ensure!(
                    loss.negatives.kind == NegativeKind::Uniform,
                    "train.negatives.kind: an ar_ebm policy trains on uniform counter-examples \
                     of each dimension (IBC appendix B.2); set it to \"uniform\""
                );
                ensure!(
                    !loss.grad_penalty.enabled,
                    "train.grad_penalty.enabled: an ar_ebm policy trains with InfoNCE alone \
                     (IBC appendix B.2); set it to false"
                );
                ensure!(
                    ebm::packable(net),
                    "policy.layer_norm, policy.dropout: ar_ebm models are plain residual MLPs \
                     (no LayerNorm, no dropout)"
                );
            }
            PolicySpec::Mse { .. } => {}
        }
        Ok(())
    }

    /// How an energy-based policy acts (none for the explicit one).
    pub fn inference_mut(&mut self) -> Option<&mut InferenceConfig> {
        match self {
            PolicySpec::Ebm { inference, .. } | PolicySpec::ArEbm { inference, .. } => {
                Some(inference)
            }
            PolicySpec::Mse { .. } => None,
        }
    }
}

/// A built network.
#[derive(Debug)]
pub enum PolicyNet {
    Ebm(SequenceEbm),
    ArEbm(AutoregressiveEbm),
    Mse(MsePolicyNet),
}

impl PolicyNet {
    /// Creates the network's variables under the root of `vs`.
    pub fn build(vs: &nn::VarStore, spec: &PolicySpec) -> Self {
        let root = vs.root();
        match spec {
            PolicySpec::Ebm { net, .. } => PolicyNet::Ebm(SequenceEbm::new(&root, net.clone())),
            PolicySpec::ArEbm { net, .. } => {
                PolicyNet::ArEbm(AutoregressiveEbm::new(&root, net.clone()))
            }
            PolicySpec::Mse { net } => PolicyNet::Mse(MsePolicyNet::new(&root, net.clone())),
        }
    }
}

/// Number of scalar weights in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
