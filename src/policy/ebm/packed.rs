//! K energy models of one shape as one batched model: each weight is stacked along a first
//! dimension of size K (`[K, out, in]`, PyTorch's `nn.Linear` layout per member), every
//! product is a batched one, and member `k`'s slice of every tensor is exactly the solo
//! model's tensor of the same (seed) name. So a pack trains K trials at the cost of one
//! launch sequence, and each member still saves and loads as a solo checkpoint.
//!
//! Only the plain residual MLP is packed (no LayerNorm, no dropout: IBC's particle EBM);
//! the hidden layers' matrix products run in the pack's [`Precision`] (a bf16 pack's
//! samplers; its loss takes fp32 products: `PackedObjective`). In bf16 the energies still
//! carry fp32's precision: the first layer (a thin product), the residual stream and the
//! energy head stay fp32, and only the blocks' products and their outputs round to bf16.
//! InfoNCE is blind to a shift of every energy, so a model's energies drift far from zero
//! (tens to hundreds in trained particle models) while the differences that rank
//! candidates are small: an energy rounded to bf16 at 100 is off by up to 0.25.

use anyhow::{ensure, Context, Result};
use tch::{Kind, Tensor};

use super::InputGradient;
use crate::policy::fused::addmm_relu;
use crate::policy::{NetConfig, Precision};

/// One linear layer of every member: `weight` `[K, out, in]`, `bias` `[K, out]`.
#[derive(Debug)]
struct PackedLinear {
    weight: Tensor,
    bias: Tensor,
}

impl PackedLinear {
    /// `x` `[K, rows, in]` -> `[K, rows, out]` in `kind`.
    fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        self.bias.to_kind(kind).unsqueeze(1).baddbmm(
            x,
            &self.weight.to_kind(kind).transpose(1, 2),
            1.0,
            1.0,
        )
    }
}

#[derive(Debug)]
pub struct PackedEbm {
    cfg: NetConfig,
    members: i64,
    precision: Precision,
    projection: PackedLinear,
    blocks: Vec<(PackedLinear, PackedLinear)>,
    energy: PackedLinear,
}

/// Whether a network can be packed.
pub fn packable(cfg: &NetConfig) -> bool {
    !cfg.layer_norm && cfg.dropout == 0.0
}

/// The solo model's tensor names, in the order [`PackedEbm::named_parameters`] gives them.
fn tensor_names(blocks: usize) -> Vec<String> {
    let mut names = vec!["projection.weight".to_owned(), "projection.bias".to_owned()];
    for i in 0..blocks {
        for layer in ["fc1", "fc2"] {
            names.push(format!("blocks.{i}.{layer}.weight"));
            names.push(format!("blocks.{i}.{layer}.bias"));
        }
    }
    names.push("energy_projection.weight".to_owned());
    names.push("energy_projection.bias".to_owned());
    names
}

impl PackedEbm {
    /// Stacks the members' weights, each given as the solo model's named tensors. The
    /// stacked tensors are leaves that require gradients.
    pub fn stack(
        cfg: &NetConfig,
        precision: Precision,
        members: &[Vec<(String, Tensor)>],
    ) -> Result<Self> {
        ensure!(
            packable(cfg),
            "only networks without LayerNorm and dropout pack"
        );
        ensure!(!members.is_empty(), "a pack has at least one member");
        let stacked = tensor_names(cfg.blocks)
            .into_iter()
            .map(|name| {
                let slices = members
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        m.iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, t)| t.detach())
                            .with_context(|| format!("pack member {k} has no tensor `{name}`"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((name, Tensor::stack(&slices, 0).set_requires_grad(true)))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_stacked(cfg, precision, &stacked)
    }

    /// A pack from tensors already stacked (as [`PackedEbm::named_parameters`] gives them),
    /// taken as they are (sharing storage, gradients included).
    pub fn from_stacked(
        cfg: &NetConfig,
        precision: Precision,
        stacked: &[(String, Tensor)],
    ) -> Result<Self> {
        let names = tensor_names(cfg.blocks);
        ensure!(
            stacked.len() == names.len()
                && stacked.iter().zip(&names).all(|((n, _), name)| n == name),
            "the stacked tensors are not this network's"
        );
        let mut tensors = stacked.iter().map(|(_, t)| t.shallow_clone());
        let mut linear = || PackedLinear {
            weight: tensors.next().expect("a weight per name"),
            bias: tensors.next().expect("a bias per name"),
        };
        let projection = linear();
        let blocks = (0..cfg.blocks).map(|_| (linear(), linear())).collect();
        let energy = linear();
        Ok(Self {
            cfg: cfg.clone(),
            members: projection.weight.size()[0],
            precision,
            projection,
            blocks,
            energy,
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn members(&self) -> i64 {
        self.members
    }

    pub fn device(&self) -> tch::Device {
        self.projection.weight.device()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A pack of the same shape whose every layer is `layer(this pack's layer)`.
    fn map_layers(
        &self,
        precision: Precision,
        layer: impl Fn(&PackedLinear) -> PackedLinear,
    ) -> PackedEbm {
        self.map_outer_and_blocks(precision, &layer, &layer)
    }

    /// [`Self::map_layers`] with one map for the first layer and the energy head (`outer`)
    /// and another for the blocks' layers.
    fn map_outer_and_blocks(
        &self,
        precision: Precision,
        outer: &dyn Fn(&PackedLinear) -> PackedLinear,
        block: &dyn Fn(&PackedLinear) -> PackedLinear,
    ) -> PackedEbm {
        let projection = outer(&self.projection);
        PackedEbm {
            cfg: self.cfg.clone(),
            members: projection.weight.size()[0],
            precision,
            projection,
            blocks: self
                .blocks
                .iter()
                .map(|(a, b)| (block(a), block(b)))
                .collect(),
            energy: outer(&self.energy),
        }
    }

    /// The same members computing in `precision` (sharing the tensors).
    pub fn with_precision(&self, precision: Precision) -> PackedEbm {
        self.map_layers(precision, |l| PackedLinear {
            weight: l.weight.shallow_clone(),
            bias: l.bias.shallow_clone(),
        })
    }

    /// The weights as they are now, detached, the blocks' cast to the compute precision
    /// once (the first layer and the energy head stay fp32, as [`Self::energies`] computes
    /// them): for samplers, which would otherwise cast every weight at each step.
    pub fn frozen(&self) -> PackedEbm {
        let detached = |kind: Kind| {
            move |l: &PackedLinear| PackedLinear {
                weight: l.weight.detach().to_kind(kind),
                bias: l.bias.detach().to_kind(kind),
            }
        };
        self.map_outer_and_blocks(
            self.precision,
            &detached(Kind::Float),
            &detached(self.precision.compute_kind()),
        )
    }

    /// The pack of the members at `positions`, in that order (copies of their slices).
    pub fn members_at(&self, positions: &[i64]) -> PackedEbm {
        let index = Tensor::from_slice(positions).to_device(self.device());
        self.map_layers(self.precision, |l| PackedLinear {
            weight: l.weight.index_select(0, &index),
            bias: l.bias.index_select(0, &index),
        })
    }

    /// Member `k` alone, as a pack of one (sharing the tensors).
    pub fn member(&self, k: i64) -> PackedEbm {
        self.map_layers(self.precision, |l| PackedLinear {
            weight: l.weight.narrow(0, k, 1),
            bias: l.bias.narrow(0, k, 1),
        })
    }

    /// Every stacked tensor under its solo name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut tensors = vec![&self.projection];
        for (fc1, fc2) in &self.blocks {
            tensors.extend([fc1, fc2]);
        }
        tensors.push(&self.energy);
        tensor_names(self.cfg.blocks)
            .into_iter()
            .zip(
                tensors
                    .into_iter()
                    .flat_map(|l| [l.weight.shallow_clone(), l.bias.shallow_clone()]),
            )
            .collect()
    }

    /// Member `k`'s tensors under the solo model's names (copies, on the CPU).
    pub fn member_state(&self, k: i64) -> Vec<(String, Tensor)> {
        self.named_parameters()
            .into_iter()
            .map(|(name, t)| (name, t.get(k).detach().to_device(tch::Device::Cpu).copy()))
            .collect()
    }

    /// Overwrites member `k`'s tensors with a solo model's (named like it).
    pub fn load_member(&self, k: i64, state: &[(String, Tensor)]) -> Result<()> {
        for (name, stacked) in self.named_parameters() {
            let (_, value) = state
                .iter()
                .find(|(n, _)| *n == name)
                .with_context(|| format!("no tensor `{name}`"))?;
            let mut slot = stacked.get(k);
            ensure!(
                slot.size() == value.size(),
                "`{name}` has shape {:?}, the pack needs {:?}",
                value.size(),
                slot.size()
            );
            tch::no_grad(|| slot.copy_(value));
        }
        Ok(())
    }

    fn obs_inputs(&self) -> i64 {
        self.cfg.obs_seq_len * self.cfg.obs_dim
    }

    /// The observation part of the first layer, `[K, B, hidden]` (fp32), for windows
    /// `[K, B, S, D]`: computed once, shared by every candidate action.
    pub fn observation_context(&self, obs: &Tensor) -> Tensor {
        let (k, b) = (obs.size()[0], obs.size()[1]);
        let w_obs = self.projection.weight.narrow(2, 0, self.obs_inputs());
        PackedLinear {
            weight: w_obs,
            bias: self.projection.bias.shallow_clone(),
        }
        .forward(
            &obs.reshape([k, b, self.obs_inputs()]).to_kind(Kind::Float),
            Kind::Float,
        )
    }

    fn action_weight(&self) -> Tensor {
        self.projection
            .weight
            .narrow(2, self.obs_inputs(), self.cfg.action_dim)
    }

    /// First hidden layer `[K, B*N, hidden]` (fp32) for candidates `[K, B, N, A]`: a product
    /// over the A action columns only, cheap beside a block's.
    fn first_hidden(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let s = actions.size();
        let h = actions
            .reshape([s[0], s[1] * s[2], s[3]])
            .to_kind(Kind::Float)
            .bmm(&self.action_weight().to_kind(Kind::Float).transpose(1, 2));
        (h.view([s[0], s[1], s[2], -1]) + context.to_kind(Kind::Float).unsqueeze(2)).view([
            s[0],
            s[1] * s[2],
            -1,
        ])
    }

    /// Energies `[K, B, N]` (fp32) of candidates `[K, B, N, A]` given a context: the blocks'
    /// products in the pack's precision, the residual stream and the energy head in fp32
    /// (see the module doc; with fp32 or TF32 products every cast here is a no-op).
    pub fn energies(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let s = actions.size();
        let kind = self.precision.compute_kind();
        let mut h = self.first_hidden(context, actions);
        for (fc1, fc2) in &self.blocks {
            // Rounding commutes with ReLU, and a bf16 + fp32 sum is an fp32 one.
            let inner = fc1.forward(&h.to_kind(kind).relu(), kind).relu();
            h = fc2.forward(&inner, kind) + h;
        }
        self.energy
            .forward(&h, Kind::Float)
            .view([s[0], s[1], s[2]])
    }

    /// The weights prepared for acting: see [`ActingPack`].
    pub fn acting(&self) -> ActingPack {
        let kind = self.precision.compute_kind();
        tch::no_grad(|| ActingPack {
            members: (0..self.members)
                .map(|m| ActingMember::new(self, m, kind))
                .collect(),
        })
    }

    /// `dE/da` `[K, B, N, A]` (fp32) at candidates `[K, B, N, A]` for observation windows
    /// `[K, B, S, D]`, for Langevin (no graph is kept).
    pub fn action_gradient(&self, obs: &Tensor, actions: &Tensor) -> Tensor {
        self.input_gradient().at(obs, actions)
    }

    /// The weights prepared for `dE/da` in a Langevin chain: see [`InputGradient`].
    pub fn input_gradient(&self) -> InputGradient {
        let blocks: Vec<_> = self
            .blocks
            .iter()
            .map(|(fc1, fc2)| ((&fc1.weight, &fc1.bias), (&fc2.weight, &fc2.bias)))
            .collect();
        InputGradient::new(
            (&self.projection.weight, &self.projection.bias),
            &blocks,
            &self.energy.weight,
            self.cfg.action_dim,
            self.precision.compute_kind(),
        )
    }
}

/// A pack's weights prepared for acting (no autograd), with what depends only on the
/// weights computed once: [`PackedEbm::energies`], faster (in bf16 its energies are rounded
/// to bf16, as a ranking of candidates can afford; training's are not). Its context is not the first
/// layer's observation part but the observation part of each candidate's input row (see
/// `ActingMember`).
///
/// Each member runs on its own 2-D products, as it does alone (batched products round
/// differently for different batch counts, enough to flip a DFO pick now and then); on the
/// CPU a pack's members act exactly as alone (tested), as long as the BLAS rounds a row
/// alike in products of different row counts (a pack cuts candidates into pieces by its
/// size). The first layer of each block adds its bias and applies its ReLU inside the
/// product. The last block's second layer is folded into the energy head: both are linear
/// and nothing else reads that block's output, so with `h` the block's input and `r` its
/// inner activation, `E = w_E h + (w_E W_2) r + (w_E b_2 + b_E)`: one `hidden x hidden`
/// product and the residual sum's passes over the rows less.
pub struct ActingPack {
    members: Vec<ActingMember>,
}

impl ActingPack {
    /// The observation part of the candidates' input rows, `[K, B, width]` (in the pack's compute
    /// kind), for windows `[K, B, S, D]`: shared by every candidate action.
    pub fn context(&self, obs: &Tensor) -> Tensor {
        tch::no_grad(|| self.per_member(|m, member| member.context(&obs.get(m))))
    }

    /// Energies `[K, B, N]` (fp32) of candidates `[K, B, N, A]` given a context.
    pub fn energies(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.per_member(|m, member| member.energies(&context.get(m), &actions.get(m)))
        })
    }

    fn per_member(&self, f: impl Fn(i64, &ActingMember) -> Tensor) -> Tensor {
        let parts: Vec<Tensor> = (0..)
            .zip(&self.members)
            .map(|(m, member)| f(m, member))
            .collect();
        Tensor::stack(&parts, 0)
    }
}

/// One member's weights in 2-D, cast for acting, with its energy head folded.
///
/// Candidates enter as input rows `[obs, 1, 0.., a]`, and the first layer (its observation
/// part and bias included) is one product with `first` `[inputs, hidden]`: no context is
/// added per candidate. With one block nothing reads the first layer's output but its ReLU
/// and the energy head, whose part `w_E h` is `x (first w_E)`: so the first product writes
/// `relu(h)` directly, and a candidate costs two products and two thin ones.
struct ActingMember {
    /// `[W_obs; b; 0..; W_act]`ᵀ rows for the input columns `[obs, 1, 0.., a]`.
    first: Tensor,
    /// Columns of the observation part of an input row (`obs`, the one, the padding).
    context_width: i64,
    /// Per block: first layer's bias and transposed weight, second layer's.
    blocks: Vec<[Tensor; 4]>,
    /// The energy head: `w_E` `[hidden, 1]`; `first w_E` `[inputs, 1]` (the head on the
    /// input rows when there is at most one block); `w_E W_2` of the last block
    /// `[hidden, 1]`; the constant `[1]` (`w_E b_2 + b_E`, or `b_E`).
    w_energy: Tensor,
    first_energy: Tensor,
    folded: Option<Tensor>,
    constant: Tensor,
    /// Zeros `[hidden]`: the bias of the fused first product.
    zero_bias: Tensor,
}

impl ActingMember {
    fn new(pack: &PackedEbm, m: i64, kind: Kind) -> Self {
        let fp32 = |t: &Tensor| t.get(m).detach().to_kind(Kind::Float);
        let cast = |t: &Tensor| t.get(m).detach().to_kind(kind);
        let blocks: Vec<[Tensor; 4]> = pack
            .blocks
            .iter()
            .map(|(fc1, fc2)| {
                [
                    cast(&fc1.bias),
                    cast(&fc1.weight).tr(),
                    cast(&fc2.bias),
                    cast(&fc2.weight).tr(),
                ]
            })
            .collect();
        let (obs_inputs, action_dim) = (pack.obs_inputs(), pack.cfg.action_dim);
        let hidden = pack.cfg.hidden;
        // Input columns: obs, the one, padding to a multiple of 8, then the action.
        let context_width = (obs_inputs + 1 + action_dim + 7) / 8 * 8 - action_dim;
        let weight = fp32(&pack.projection.weight); // [hidden, obs + A]
        let first = Tensor::zeros(
            [context_width + action_dim, hidden],
            (Kind::Float, weight.device()),
        );
        first
            .narrow(0, 0, obs_inputs)
            .copy_(&weight.narrow(1, 0, obs_inputs).tr());
        first
            .narrow(0, obs_inputs, 1)
            .copy_(&fp32(&pack.projection.bias).unsqueeze(0));
        first
            .narrow(0, context_width, action_dim)
            .copy_(&weight.narrow(1, obs_inputs, action_dim).tr());
        let w_energy = fp32(&pack.energy.weight).tr(); // [hidden, 1]
        let b_energy = fp32(&pack.energy.bias); // [1]
        let (folded, constant) = match pack.blocks.last() {
            Some((_, fc2)) => (
                Some(fp32(&fc2.weight).tr().matmul(&w_energy)),
                fp32(&fc2.bias).matmul(&w_energy) + b_energy,
            ),
            None => (None, b_energy),
        };
        Self {
            first_energy: first.matmul(&w_energy).to_kind(kind),
            first: first.to_kind(kind),
            context_width,
            blocks,
            w_energy: w_energy.to_kind(kind),
            folded: folded.map(|f| f.to_kind(kind)),
            constant: constant.to_kind(kind),
            zero_bias: Tensor::zeros([hidden], (kind, weight.device())),
        }
    }

    /// The observation part of the input rows, `[B, context_width]`, for windows
    /// `[B, S, D]`.
    fn context(&self, obs: &Tensor) -> Tensor {
        let b = obs.size()[0];
        let rows = Tensor::zeros([b, self.context_width], (self.first.kind(), obs.device()));
        let obs = obs.reshape([b, -1]);
        let obs_inputs = obs.size()[1];
        rows.narrow(1, 0, obs_inputs).copy_(&obs);
        let _ = rows.narrow(1, obs_inputs, 1).fill_(1.0);
        rows
    }

    /// Energies `[B, N]` (fp32) of candidates `[B, N, A]` given a context `[B, width]`.
    fn energies(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        let s = actions.size();
        let kind = self.first.kind();
        let x = Tensor::cat(
            &[
                context
                    .to_kind(kind)
                    .unsqueeze(1)
                    .expand([s[0], s[1], self.context_width], false),
                actions.to_kind(kind),
            ],
            2,
        )
        .view([s[0] * s[1], -1]);
        let energies = match self.blocks.as_slice() {
            [] => self.constant.addmm(&x, &self.first_energy),
            [[b1, w1_t, ..]] => {
                let u = addmm_relu(&self.zero_bias, &x, &self.first);
                let inner = addmm_relu(b1, &u, w1_t);
                self.constant
                    .addmm(&x, &self.first_energy)
                    .addmm(&inner, self.folded.as_ref().expect("folded with the block"))
            }
            [earlier @ .., [b1, w1_t, ..]] => {
                let mut h = x.matmul(&self.first);
                for [b1, w1_t, b2, w2_t] in earlier {
                    let inner = addmm_relu(b1, &h.relu(), w1_t);
                    h = b2.addmm(&inner, w2_t) + h;
                }
                let inner = addmm_relu(b1, &h.relu(), w1_t);
                self.constant.addmm(&h, &self.w_energy).addmm(
                    &inner,
                    self.folded.as_ref().expect("folded with the last block"),
                )
            }
        };
        energies.to_kind(Kind::Float).view([s[0], s[1]])
    }
}
