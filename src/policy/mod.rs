//! Policies: the implicit energy-based policy and the explicit MSE baseline, chosen by
//! `kind` in the spec.

mod acting;
pub mod ebm;
mod inference;
pub mod mse;
mod precision;
pub mod resnet;

pub use acting::{LoadedPolicy, PolicyView};
pub use inference::{in_row_chunks, infer_actions, InferenceConfig, InferenceKind};
pub use precision::Precision;

use serde::{Deserialize, Serialize};
use tch::nn;

pub use resnet::NetConfig;

use ebm::{EbmLossConfig, SequenceEbm};
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
    Mse {
        net: NetConfig,
    },
}

impl PolicySpec {
    pub fn kind(&self) -> &'static str {
        match self {
            PolicySpec::Ebm { .. } => "ebm",
            PolicySpec::Mse { .. } => "mse",
        }
    }

    /// Observation window length, observation size and action size the network expects.
    pub fn shapes(&self) -> (i64, i64, i64) {
        match self {
            PolicySpec::Ebm { net, .. } => (net.obs_seq_len, net.obs_dim, net.action_dim),
            PolicySpec::Mse { net } => (net.obs_seq_len, net.obs_dim, net.action_dim),
        }
    }
}

/// A built network.
#[derive(Debug)]
pub enum PolicyNet {
    Ebm(SequenceEbm),
    Mse(MsePolicyNet),
}

impl PolicyNet {
    /// Creates the network's variables under the root of `vs`.
    pub fn build(vs: &nn::VarStore, spec: &PolicySpec) -> Self {
        let root = vs.root();
        match spec {
            PolicySpec::Ebm { net, .. } => PolicyNet::Ebm(SequenceEbm::new(&root, net.clone())),
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
