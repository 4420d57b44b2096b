//! The pre-activation residual MLP shared by the energy model and the explicit baseline
//! (IBC's `ResNetPreActivationLayer`, the seed's `MLPResidualBlock`).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

/// Shape of a residual MLP policy network (energy model or explicit policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub obs_seq_len: i64,
    pub obs_dim: i64,
    pub action_dim: i64,
    pub hidden: i64,
    pub blocks: usize,
    pub dropout: f64,
    /// LayerNorm before each activation (the seed's class default; IBC uses none).
    pub layer_norm: bool,
}

impl Default for NetConfig {
    /// The seed's 2-D particle model with its parameter table (LayerNorm on): 137,729
    /// weights as an energy model.
    fn default() -> Self {
        Self {
            obs_seq_len: 2,
            obs_dim: 8,
            action_dim: 2,
            hidden: 256,
            blocks: 1,
            dropout: 0.0,
            layer_norm: true,
        }
    }
}

/// PyTorch's `nn.Linear` initialisation: weights and bias uniform in `±1/sqrt(fan_in)`.
pub fn linear(p: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// `x -> [LayerNorm] -> ReLU -> Dropout -> fc1 -> [LayerNorm] -> ReLU -> Dropout -> fc2 -> + x`.
#[derive(Debug)]
pub struct ResidualBlock {
    pub norm1: Option<nn::LayerNorm>,
    pub fc1: nn::Linear,
    pub norm2: Option<nn::LayerNorm>,
    pub fc2: nn::Linear,
    pub dropout: f64,
}

impl ResidualBlock {
    /// Tensor names follow the seed: `norm1`, `fc1`, `norm2`, `fc2` under `p`.
    pub fn new(p: nn::Path, hidden: i64, dropout: f64, layer_norm: bool) -> Self {
        let norm = |name: &str| {
            layer_norm.then(|| nn::layer_norm(&p / name, vec![hidden], Default::default()))
        };
        Self {
            norm1: norm("norm1"),
            fc1: linear(&p / "fc1", hidden, hidden),
            norm2: norm("norm2"),
            fc2: linear(&p / "fc2", hidden, hidden),
            dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let pre = |x: &Tensor, norm: &Option<nn::LayerNorm>| {
            let x = match norm {
                Some(norm) => norm.forward(x),
                None => x.shallow_clone(),
            };
            x.relu().dropout(self.dropout, train)
        };
        let out = self.fc1.forward(&pre(x, &self.norm1));
        let out = self.fc2.forward(&pre(&out, &self.norm2));
        out + x
    }

    pub fn has_layer_norm(&self) -> bool {
        self.norm1.is_some()
    }
}

/// `count` blocks named `blocks.0`, `blocks.1`, ... under `p`.
pub fn residual_blocks(
    p: &nn::Path,
    count: usize,
    hidden: i64,
    dropout: f64,
    layer_norm: bool,
) -> Vec<ResidualBlock> {
    (0..count)
        .map(|i| ResidualBlock::new(p / "blocks" / i, hidden, dropout, layer_norm))
        .collect()
}
