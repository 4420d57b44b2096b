//! SequenceEBM: energy `E(obs window, action)` from a residual MLP over the flattened window
//! concatenated with the action, as in the seed (and IBC's `MLPEBM`).

use tch::nn::{self, Module};
use tch::Tensor;

use crate::policy::resnet::{linear, residual_blocks, NetConfig, ResidualBlock};

/// The energy network. Tensor names: `projection`, `blocks.i.{norm1,fc1,norm2,fc2}`,
/// `energy_projection` (the seed's PyTorch module names).
#[derive(Debug)]
pub struct SequenceEbm {
    cfg: NetConfig,
    projection: nn::Linear,
    blocks: Vec<ResidualBlock>,
    energy_projection: nn::Linear,
}

impl SequenceEbm {
    pub fn new(p: &nn::Path, cfg: NetConfig) -> Self {
        let input = cfg.obs_seq_len * cfg.obs_dim + cfg.action_dim;
        Self {
            projection: linear(p / "projection", input, cfg.hidden),
            blocks: residual_blocks(p, cfg.blocks, cfg.hidden, cfg.dropout, cfg.layer_norm),
            energy_projection: linear(p / "energy_projection", cfg.hidden, 1),
            cfg,
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Every tensor under its seed name, in [`super::PackedEbm`]'s order (no LayerNorm).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut layers = vec![("projection".to_owned(), &self.projection)];
        for (i, block) in self.blocks.iter().enumerate() {
            layers.push((format!("blocks.{i}.fc1"), &block.fc1));
            layers.push((format!("blocks.{i}.fc2"), &block.fc2));
        }
        layers.push(("energy_projection".to_owned(), &self.energy_projection));
        layers
            .into_iter()
            .flat_map(|(name, layer)| {
                let bias = layer.bs.as_ref().expect("every layer has a bias");
                [
                    (format!("{name}.weight"), layer.ws.shallow_clone()),
                    (format!("{name}.bias"), bias.shallow_clone()),
                ]
            })
            .collect()
    }

    fn obs_inputs(&self) -> i64 {
        self.cfg.obs_seq_len * self.cfg.obs_dim
    }

    /// The part of the projection that depends on the observation only, `(B, hidden)`.
    ///
    /// `projection([obs, a]) = W_obs obs + W_act a + b`: computed once per observation
    /// window, it is shared by every candidate action (thousands in DFO, 100 Langevin steps).
    pub fn observation_context(&self, obs: &Tensor) -> Tensor {
        let batch = obs.size()[0];
        let w_obs = self.projection.ws.narrow(1, 0, self.obs_inputs());
        obs.reshape([batch, self.obs_inputs()])
            .linear(&w_obs, self.projection.bs.as_ref())
    }

    /// Energies `(B, N)` of candidate actions `(B, N, action_dim)` given a context.
    pub fn energies_with_context(&self, context: &Tensor, actions: &Tensor, train: bool) -> Tensor {
        let mut h = self.first_hidden(context, actions);
        for block in &self.blocks {
            h = block.forward(&h, train);
        }
        self.energy_projection.forward(&h).squeeze_dim(-1)
    }

    /// Energies `(B, N)` of candidate actions `(B, N, A)` for observation windows `(B, S, D)`.
    pub fn energies(&self, obs: &Tensor, actions: &Tensor, train: bool) -> Tensor {
        self.energies_with_context(&self.observation_context(obs), actions, train)
    }

    fn first_hidden(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let w_act = self
            .projection
            .ws
            .narrow(1, self.obs_inputs(), self.cfg.action_dim);
        actions.linear::<Tensor>(&w_act, None) + context.unsqueeze(1)
    }

    /// `dE/da` at candidate actions `(B, N, A)`, for Langevin: no graph is kept.
    ///
    /// Without LayerNorm the network is piecewise linear, and its input gradient is a short
    /// hand-written backward pass: the output weights make the last block's upstream
    /// gradient one constant vector, so a step costs two `hidden x hidden` products instead
    /// of autograd's four. With LayerNorm it falls back to autograd.
    pub fn action_gradient(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        self.action_gradient_fn(context)(actions)
    }

    /// [`Self::action_gradient`] at any candidates for one context, with what depends only
    /// on the weights computed once (a Langevin chain asks 100 times).
    pub fn action_gradient_fn<'a>(
        &'a self,
        context: &'a Tensor,
    ) -> Box<dyn Fn(&Tensor) -> Tensor + 'a> {
        if self.blocks.iter().any(ResidualBlock::has_layer_norm) {
            return Box::new(move |actions| self.action_gradient_autograd(context, actions));
        }
        let w_act = self
            .projection
            .ws
            .narrow(1, self.obs_inputs(), self.cfg.action_dim);
        // Backward from dE/dh_out = w_energy, the same for every row; the residual path
        // carries it to every block's input. The gradient is kept as that row plus a full
        // part, so the row is never written out at full size: its products with each
        // block's second layer and with the action weights are constants of the chain.
        let (rows_r2, row_act) = tch::no_grad(|| {
            let w_energy = self.energy_projection.ws.reshape([-1]);
            let rows: Vec<Tensor> = self
                .blocks
                .iter()
                .map(|block| w_energy.matmul(&block.fc2.ws))
                .collect();
            (rows, w_energy.matmul(&w_act))
        });
        Box::new(move |actions: &Tensor| {
            tch::no_grad(|| {
                // Forward, keeping each block's input and first pre-activation (ReLU masks).
                let mut h = self.first_hidden(context, actions);
                let mut saved = Vec::with_capacity(self.blocks.len());
                for (i, block) in self.blocks.iter().enumerate() {
                    let z1 = block.fc1.forward(&h.relu());
                    let last = i + 1 == self.blocks.len();
                    let next = if last {
                        None
                    } else {
                        Some(&h + block.fc2.forward(&z1.relu()))
                    };
                    saved.push((h, z1));
                    if let Some(next) = next {
                        h = next;
                    } else {
                        break;
                    }
                }
                let mut full: Option<Tensor> = None; // None: zero
                for ((block, (h_in, z1)), row) in self.blocks.iter().zip(&saved).zip(&rows_r2).rev()
                {
                    let g_r2 = match &full {
                        None => row.shallow_clone(),
                        Some(f) => f.matmul(&block.fc2.ws) + row,
                    };
                    let g_z1 = z1.threshold_backward(&g_r2, 0.0);
                    let g_r1 = g_z1.matmul(&block.fc1.ws);
                    let g_h = h_in.threshold_backward(&g_r1, 0.0);
                    full = Some(match full {
                        None => g_h,
                        Some(f) => f + g_h,
                    });
                }
                match full {
                    Some(f) => f.matmul(&w_act) + &row_act,
                    None => row_act.expand_as(actions).contiguous(),
                }
            })
        })
    }

    /// `dE/da` through autograd (any architecture); detached result.
    pub fn action_gradient_autograd(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let actions = actions.detach().set_requires_grad(true);
        let energies = self.energies_with_context(&context.detach(), &actions, false);
        let grads = Tensor::run_backward(&[energies.sum(None)], &[&actions], false, false);
        grads[0].detach()
    }
}
