//! The explicit baseline (IBC `mlp_mse.gin`): the same residual MLP mapping the observation
//! window straight to an action, trained with mean squared error.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::resnet::{linear, residual_blocks, NetConfig, ResidualBlock};

/// Tensor names: `projection`, `blocks.i.*`, `action_projection`.
#[derive(Debug)]
pub struct MsePolicyNet {
    cfg: NetConfig,
    projection: nn::Linear,
    blocks: Vec<ResidualBlock>,
    action_projection: nn::Linear,
}

impl MsePolicyNet {
    pub fn new(p: &nn::Path, cfg: NetConfig) -> Self {
        Self {
            projection: linear(p / "projection", cfg.obs_seq_len * cfg.obs_dim, cfg.hidden),
            blocks: residual_blocks(p, cfg.blocks, cfg.hidden, cfg.dropout, cfg.layer_norm),
            action_projection: linear(p / "action_projection", cfg.hidden, cfg.action_dim),
            cfg,
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Actions `(B, A)` (normalized) for observation windows `(B, S, D)`.
    pub fn forward(&self, obs: &Tensor, train: bool) -> Tensor {
        let batch = obs.size()[0];
        let mut h = self
            .projection
            .forward(&obs.reshape([batch, self.cfg.obs_seq_len * self.cfg.obs_dim]));
        for block in &self.blocks {
            h = block.forward(&h, train);
        }
        self.action_projection.forward(&h)
    }

    /// Mean squared error against demonstrated actions `(B, A)`.
    pub fn loss(&self, obs: &Tensor, actions: &Tensor) -> Tensor {
        (self.forward(obs, true) - actions)
            .square()
            .mean(Kind::Float)
    }
}
