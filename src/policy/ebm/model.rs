//! SequenceEBM: energy `E(obs window, action)` from a residual MLP over the flattened window
//! concatenated with the action, as in the seed (and IBC's `MLPEBM`).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::InputGradient;
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

    /// `dE/da` at candidate actions `(B, N, A)` for observation windows `(B, S, D)`, for
    /// Langevin: no graph is kept.
    ///
    /// Without LayerNorm the network is piecewise linear, and its input gradient is a short
    /// hand-written backward pass ([`InputGradient`], on this model as a pack of one, so a
    /// solo trial's chains are a packed one's); with LayerNorm it falls back to autograd.
    pub fn action_gradient(&self, obs: &Tensor, actions: &Tensor) -> Tensor {
        self.action_gradient_fn(obs)(actions)
    }

    /// [`Self::action_gradient`] at any candidates for one batch of observations, with what
    /// depends only on the weights prepared once (a Langevin chain asks 100 times).
    pub fn action_gradient_fn<'a>(
        &'a self,
        obs: &'a Tensor,
    ) -> Box<dyn Fn(&Tensor) -> Tensor + 'a> {
        match self.input_gradient() {
            Some(gradient) => {
                let chain = gradient.chain(obs.unsqueeze(0));
                Box::new(move |actions: &Tensor| chain(&actions.unsqueeze(0)).squeeze_dim(0))
            }
            None => {
                let context = tch::no_grad(|| self.observation_context(obs));
                Box::new(move |actions| self.action_gradient_autograd(&context, actions))
            }
        }
    }

    /// The weights prepared for the hand-written `dE/da` as a pack of one (fp32), or `None`
    /// for a network with LayerNorm.
    pub fn input_gradient(&self) -> Option<InputGradient> {
        if self.blocks.iter().any(ResidualBlock::has_layer_norm) {
            return None;
        }
        let one = |t: &Tensor| t.unsqueeze(0);
        let bias = |l: &nn::Linear| one(l.bs.as_ref().expect("linear layers have biases"));
        let layers: Vec<_> = self
            .blocks
            .iter()
            .map(|b| {
                (
                    (one(&b.fc1.ws), bias(&b.fc1)),
                    (one(&b.fc2.ws), bias(&b.fc2)),
                )
            })
            .collect();
        let blocks: Vec<_> = layers
            .iter()
            .map(|((w1, b1), (w2, b2))| ((w1, b1), (w2, b2)))
            .collect();
        Some(InputGradient::new(
            (&one(&self.projection.ws), &bias(&self.projection)),
            &blocks,
            &one(&self.energy_projection.ws),
            self.cfg.action_dim,
            Kind::Float,
        ))
    }

    /// `dE/da` through autograd (any architecture); detached result.
    pub fn action_gradient_autograd(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let actions = actions.detach().set_requires_grad(true);
        let energies = self.energies_with_context(&context.detach(), &actions, false);
        let grads = Tensor::run_backward(&[energies.sum(None)], &[&actions], false, false);
        grads[0].detach()
    }
}
