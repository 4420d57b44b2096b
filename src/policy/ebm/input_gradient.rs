//! `dE/da` of a pack's residual MLP for Langevin, as plain batched products.
//!
//! A Langevin step is a forward and a backward pass over `[K, B*N, hidden]` tensors, and on a
//! GPU its cost is the number of passes over them. Broadcast operations (adding a context
//! shared by a row's candidates, a bias, multiplying by a gradient row) run in ATen's
//! generic kernels at about twice the cost of a plain pass, and a batched product with a
//! bias first writes the bias out at full size. So every layer here is augmented with a
//! constant-one column, which carries the biases into the products:
//!
//! - the input rows are `x = [obs, a, 1, 0..]` (padded to a multiple of 8 columns), and the
//!   first layer's `[W_obs, W_act, b]` is one product: no context added per candidate;
//! - the hidden width is `W = hidden + 8`: column `hidden` is 1 in every row (each layer
//!   passes it on, and ReLU keeps it), the rest of the padding 0; a block's first layer
//!   reads its bias from that column;
//! - the last block's upstream gradient is a constant row `c`, so its masked product
//!   `(m ⊙ c) W1` is `m (diag(c) W1)`: the mask is written in place of the pre-activation
//!   (`gt_`: 1 where positive, else 0), and the row scales the weights once per chain.
//!
//! The constant column gathers gradient (the biases'), but it stays in its column: the
//! products that read the padding have zero weights there, down to the action columns of
//! the first layer. For IBC's network (one block) a step is: the input product, one ReLU, a
//! product, the mask, a product, the masked gradient, the action product.
//!
//! On a GPU, a one-block network's step is fused further, once it has agreed with the eager
//! gradient ([`super::fused_steps`]): the first product writes `relu(h)` from its
//! cuBLASLt epilogue, our kernel writes the mask (ATen's `gt_` on bf16 is unvectorized), and
//! our kernel takes the action product of the backward product under the first layer's
//! mask in one read, without writing the masked gradient: 5 passes over `[K, rows, W]`
//! instead of 7, and about 8 tensors' worth of bytes moved instead of 13
//! ([`crate::policy::runtime_kernels`]).

use std::cell::RefCell;

use anyhow::Result;
use tch::{Kind, Tensor};

use super::fused_steps;
use crate::policy::{cublas_lt, runtime_kernels, Precision};

/// Columns of padding after `hidden`: the constant one and zeros up to a multiple of 8
/// (tensor cores want dimensions that are multiples of 8).
const PAD: i64 = 8;

/// One stacked layer: `(weight [K, out, in], bias [K, out])`.
pub type Layer<'a> = (&'a Tensor, &'a Tensor);

/// The augmented weights of one pack (see the module doc), in its compute kind.
pub struct InputGradient {
    kind: Kind,
    obs_inputs: i64,
    action_dim: i64,
    /// Input columns: `obs_inputs + action_dim + 1`, rounded up to a multiple of 8.
    inputs: i64,
    /// `x @ first`: `[K, inputs, W]`.
    first: Tensor,
    /// Per block: `u @ fc1` and `r @ fc2`, each `[K, W, W]`, and the backward products.
    blocks: Vec<Block>,
    /// `dE/da` of the constant row, `[K, 1, A]` (fp32).
    row_act: Tensor,
    /// The first layer's action rows, transposed: `[K, W, A]`.
    act_back: Tensor,
}

struct Block {
    fc1: Tensor,
    fc2: Tensor,
    /// `fc1ᵀ`, or for the last block `diag(c) fc1ᵀ` with `c` its constant upstream row.
    fc1_back: Tensor,
    /// `fc2ᵀ` (blocks before the last).
    fc2_back: Tensor,
    /// The constant part of the gradient at the block's inner activation `[K, 1, W]`.
    row: Tensor,
}

/// One layer as the weights of `u @ m` on augmented rows: `m[..hidden, ..out] = wᵀ`,
/// `m[one, ..out] = b`, and `m[one, one] = 1` where the layer passes the constant on.
fn augmented(
    weight: &Tensor,
    bias: &Tensor,
    rows: i64,
    cols: i64,
    one: i64,
    keep_one: bool,
) -> Tensor {
    let (k, out, inp) = (weight.size()[0], weight.size()[1], weight.size()[2]);
    let m = Tensor::zeros([k, rows, cols], (weight.kind(), weight.device()));
    m.narrow(1, 0, inp)
        .narrow(2, 0, out)
        .copy_(&weight.transpose(1, 2));
    m.narrow(1, one, 1)
        .narrow(2, 0, out)
        .copy_(&bias.view([k, 1, out]));
    if keep_one {
        let _ = m.narrow(1, one, 1).narrow(2, out, 1).fill_(1.0);
    }
    m
}

impl InputGradient {
    /// The augmented weights of a pack given as the solo tensors stacked `[K, ..]`:
    /// `projection` `(weight [K, H, obs+A], bias [K, H])`, blocks `(fc1, fc2)`, `energy`
    /// `(weight [K, 1, H], bias [K, 1])`, for products in `kind`. The backward constants
    /// are formed in fp32 and rounded once.
    pub fn new(
        projection: Layer,
        blocks: &[(Layer, Layer)],
        energy: &Tensor,
        action_dim: i64,
        kind: Kind,
    ) -> Self {
        tch::no_grad(|| {
            let fp32 = |t: &Tensor| t.detach().to_kind(Kind::Float);
            let (members, hidden, input) = {
                let s = projection.0.size();
                (s[0], s[1], s[2])
            };
            let device = projection.0.device();
            let width = hidden + PAD;
            let obs_inputs = input - action_dim;
            let inputs = (input + 1 + 7) / 8 * 8;
            let first = augmented(
                &fp32(projection.0),
                &fp32(projection.1),
                inputs,
                width,
                input,
                true,
            );
            // dE/dh along the residual stream: the energy head's row [K, 1, W].
            let e = Tensor::zeros([members, 1, width], (Kind::Float, device));
            e.narrow(2, 0, hidden).copy_(&fp32(energy));
            let count = blocks.len();
            let blocks: Vec<Block> = blocks
                .iter()
                .enumerate()
                .map(|(i, ((w1, b1), (w2, b2)))| {
                    let fc1 = augmented(&fp32(w1), &fp32(b1), width, width, hidden, true);
                    let fc2 = augmented(&fp32(w2), &fp32(b2), width, width, hidden, false);
                    let fc2_back = fc2.transpose(1, 2);
                    let row = e.bmm(&fc2_back);
                    let fc1_back = if i + 1 == count {
                        row.transpose(1, 2) * fc1.transpose(1, 2)
                    } else {
                        fc1.transpose(1, 2)
                    };
                    let cast = |t: &Tensor| t.to_kind(kind).contiguous();
                    Block {
                        fc1: cast(&fc1),
                        fc2: cast(&fc2),
                        fc1_back: cast(&fc1_back),
                        fc2_back: cast(&fc2_back),
                        row: cast(&row),
                    }
                })
                .collect();
            let act_back = first.narrow(1, obs_inputs, action_dim).transpose(1, 2);
            Self {
                kind,
                obs_inputs,
                action_dim,
                inputs,
                row_act: e.bmm(&act_back),
                first: first.to_kind(kind),
                act_back: act_back.to_kind(kind).contiguous(),
                blocks,
            }
        })
    }

    /// Input rows `[K, B, N, inputs]` for candidates `[K, B, N, A]` of observation windows
    /// `[K, B, ..]`, the actions' columns left to fill.
    fn observation_rows(&self, obs: &Tensor, shape: &[i64]) -> Tensor {
        let (k, b, n) = (shape[0], shape[1], shape[2]);
        let rows = Tensor::zeros([k, b, n, self.inputs], (self.kind, obs.device()));
        rows.narrow(3, 0, self.obs_inputs)
            .copy_(&obs.reshape([k, b, 1, self.obs_inputs]));
        let _ = rows
            .narrow(3, self.obs_inputs + self.action_dim, 1)
            .fill_(1.0);
        rows
    }

    /// `dE/da` `[K, B, N, A]` (fp32) at candidates `[K, B, N, A]` for observation windows
    /// `[K, B, S, D]` (or flattened `[K, B, S*D]`).
    pub fn at(&self, obs: &Tensor, actions: &Tensor) -> Tensor {
        let rows = self.observation_rows(obs, &actions.size());
        self.at_rows(&rows, actions)
    }

    /// [`Self::at`] for a chain on observation windows `obs`: the observation rows are built
    /// at the first step and only the actions' columns are written at the next ones.
    pub fn chain(self, obs: Tensor) -> impl Fn(&Tensor) -> Tensor {
        let rows: RefCell<Option<Tensor>> = RefCell::new(None);
        move |actions: &Tensor| {
            let mut rows = rows.borrow_mut();
            let shape = actions.size();
            if !matches!(&*rows, Some(r) if r.size()[..3] == shape[..3]) {
                *rows = Some(self.observation_rows(&obs, &shape));
            }
            self.at_rows(rows.as_ref().expect("built above"), actions)
        }
    }

    /// `dE/dh` `[K, rows, W]` at the first layer's output for input rows `x`
    /// `[K, rows, inputs]`, with ATen's products.
    fn hidden_gradient(&self, x: &Tensor) -> Tensor {
        let mut h = x.bmm(&self.first);
        let last = self.blocks.len() - 1;
        let mut saved = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            if i == last {
                // Nothing reads the stream past the last block: ReLU in place.
                let u = h.relu_();
                let z = u.bmm(&block.fc1);
                saved.push((u, z));
                break;
            }
            let u = h.relu();
            let z = u.bmm(&block.fc1);
            h = h.baddbmm(&z.relu(), &block.fc2, 1.0, 1.0);
            saved.push((u, z));
        }
        let mut full: Option<Tensor> = None;
        for (block, (u, mut z)) in self.blocks.iter().zip(saved).rev() {
            let g_u = match &full {
                // The last block: its upstream gradient is the constant row.
                None => z.gt_(0.0).bmm(&block.fc1_back),
                Some(f) => {
                    let g_r = f.bmm(&block.fc2_back) + &block.row;
                    z.threshold_backward(&g_r, 0.0).bmm(&block.fc1_back)
                }
            };
            let g_h = u.threshold_backward(&g_u, 0.0);
            full = Some(match full {
                None => g_h,
                Some(f) => f + g_h,
            });
        }
        full.expect("at least one block")
    }

    /// `dE/da` `[K, rows, A]` (fp32) for input rows `x` `[K, rows, inputs]`, with ATen's
    /// products.
    fn action_gradient(&self, x: &Tensor) -> Tensor {
        self.hidden_gradient(x)
            .bmm(&self.act_back)
            .to_kind(Kind::Float)
            + &self.row_act
    }

    /// [`Self::action_gradient`] of a one-block network, fused (see the module doc).
    fn action_gradient_fused(&self, x: &Tensor) -> Result<Tensor> {
        self.one_block_action_gradient(
            x,
            cublas_lt::bmm_relu,
            runtime_kernels::heaviside_,
            runtime_kernels::masked_action_product,
        )
    }

    /// A one-block network's `dE/da` from a product with a ReLU (`relu_product(x, w)`:
    /// `relu(x @ w)`), a mask written in place (`heaviside(z)`: `z = (z > 0)`) and the
    /// action product under a mask (`masked_action_product(p, u, back, row)`:
    /// `(p ⊙ (u > 0)) @ back + row`, fp32).
    fn one_block_action_gradient(
        &self,
        x: &Tensor,
        relu_product: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        heaviside: impl Fn(&Tensor) -> Result<()>,
        masked_action_product: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let block = &self.blocks[0];
        let u = relu_product(x, &self.first)?;
        let z = u.bmm(&block.fc1);
        heaviside(&z)?;
        let p = z.bmm(&block.fc1_back);
        masked_action_product(&p, &u, &self.act_back, &self.row_act)
    }

    /// `dE/da` with the input rows' observation and constant columns already in `rows`.
    fn at_rows(&self, rows: &Tensor, actions: &Tensor) -> Tensor {
        let s = actions.size();
        tch::no_grad(|| {
            if self.blocks.is_empty() {
                return self
                    .row_act
                    .view([s[0], 1, 1, s[3]])
                    .expand(&s[..], false)
                    .contiguous();
            }
            rows.narrow(3, self.obs_inputs, self.action_dim)
                .copy_(actions);
            let x = rows.view([s[0], s[1] * s[2], self.inputs]);
            // The kernels read rows of whole 16-byte vectors (8 bf16 elements).
            let fusable = self.blocks.len() == 1
                && x.device().is_cuda()
                && self.first.size()[2] % 8 == 0
                && runtime_kernels::masked_product_fits(self.action_dim, self.first.size()[2])
                && cublas_lt::available()
                && runtime_kernels::available();
            let grad = if fusable {
                // A configuration: element type, TF32 or not, and the pack's and layers'
                // sizes. Not the rows, which an evaluation's last chunk of candidates may
                // vary: each new key costs two checked (eager and fused) calls.
                let key = [
                    i64::from(self.kind == Kind::BFloat16),
                    i64::from(Precision::tf32_enabled()),
                    s[0],
                    self.inputs,
                    self.first.size()[2],
                    self.action_dim,
                ];
                fused_steps::GRADIENT.gradient(
                    &key,
                    || self.action_gradient(&x),
                    || self.action_gradient_fused(&x),
                )
            } else {
                self.action_gradient(&x)
            };
            grad.view([s[0], s[1], s[2], s[3]])
        })
    }
}

#[cfg(test)]
mod tests {
    //! The gradient's arithmetic against autograd is tested with the models that use it
    //! (tests/ebm_core.rs, tests/packing.rs); here: its precisions and its chain form.

    use tch::{nn, Device};

    use super::*;
    use crate::policy::ebm::{PackedEbm, SequenceEbm};
    use crate::policy::{NetConfig, Precision};

    /// A pack of two random members (fp32). Tests run in parallel threads that share
    /// libtorch's generator, so whatever is compared is derived from one pack.
    fn pack(blocks: usize) -> PackedEbm {
        pack_on(blocks, Device::Cpu)
    }

    fn pack_on(blocks: usize, device: Device) -> PackedEbm {
        let net = NetConfig {
            obs_seq_len: 2,
            obs_dim: 3,
            action_dim: 2,
            hidden: 32,
            blocks,
            dropout: 0.0,
            layer_norm: false,
        };
        let members: Vec<Vec<(String, Tensor)>> = (0..2)
            .map(|k| {
                tch::manual_seed(k);
                let vs = nn::VarStore::new(Device::Cpu);
                let _model = SequenceEbm::new(&vs.root(), net.clone());
                vs.variables()
                    .into_iter()
                    .map(|(name, t)| (name, t.to_device(device)))
                    .collect()
            })
            .collect();
        PackedEbm::stack(&net, Precision::Fp32, &members)
            .expect("one shape")
            .frozen()
    }

    fn inputs(seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let options = (Kind::Float, Device::Cpu);
        (
            Tensor::randn([2, 5, 2, 3], options),
            Tensor::rand([2, 5, 7, 2], options) * 2.0 - 1.0,
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn in_bf16_the_gradient_is_the_fp32_one_to_bf16_rounding() {
        for blocks in [1, 2] {
            let (obs, actions) = inputs(3);
            let model = pack(blocks);
            let exact = model.action_gradient(&obs, &actions);
            let low = model
                .with_precision(Precision::Bf16)
                .frozen()
                .action_gradient(&obs, &actions);
            assert_eq!(low.kind(), Kind::Float);
            // bf16 keeps 8 bits: a few roundings of 2^-9 on each product, and now and then
            // a ReLU mask flipped near zero (over 60 random nets: mean error <= 1.1% of
            // the mean gradient, the largest <= 11% of the largest).
            let diff = (&low - &exact).abs();
            let mean = diff.mean(Kind::Float).double_value(&[])
                / exact.abs().mean(Kind::Float).double_value(&[]);
            assert!(mean < 0.03, "{blocks} blocks: mean error {mean}");
            let diff = diff.max().double_value(&[]);
            assert!(diff > 0.0, "{blocks} blocks: bf16 computed nothing in bf16");
        }
    }

    #[test]
    fn a_chain_reuses_its_observation_rows_and_gives_each_steps_own_gradient() {
        let model = pack(1);
        let (obs, first) = inputs(4);
        let (_, second) = inputs(5);
        let chain = model.input_gradient().chain(obs.shallow_clone());
        for actions in [&first, &second, &first] {
            let expected = model.action_gradient(&obs, actions);
            assert_eq!(max_diff(&chain(actions), &expected), 0.0);
        }
    }

    /// The fused gradient's arithmetic (GPU only) with its three steps written eagerly: the
    /// one-block gradient they make is the eager gradient, and a mask taken from the wrong
    /// tensor is told apart.
    #[test]
    fn the_one_block_gradient_from_the_fused_steps_is_the_eager_one() {
        let pack = pack(1);
        let gradient = pack.input_gradient();
        let obs = Tensor::randn([2, 5, 6], (Kind::Float, Device::Cpu));
        let actions = Tensor::randn([2, 5, 3, 2], (Kind::Float, Device::Cpu));
        let rows = gradient.observation_rows(&obs, &actions.size());
        rows.narrow(3, gradient.obs_inputs, gradient.action_dim)
            .copy_(&actions);
        let x = rows.view([2, 15, gradient.inputs]);
        let eager = gradient.action_gradient(&x);
        let heaviside = |z: &Tensor| {
            let _ = z.shallow_clone().gt_(0.0);
            Ok(())
        };
        let fused_with = |mask_of: fn(&Tensor, &Tensor) -> Tensor| {
            gradient
                .one_block_action_gradient(
                    &x,
                    |x, w| Ok(x.bmm(w).relu()),
                    heaviside,
                    |p, u, back, row| Ok((p * mask_of(p, u)).bmm(back) + row),
                )
                .unwrap()
        };
        let fused = fused_with(|_, u| u.gt(0.0).to_kind(Kind::Float));
        assert_eq!(fused.size(), eager.size());
        let difference = (&fused - &eager).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "{difference}");
        assert!(eager.abs().mean(Kind::Float).double_value(&[]) > 1e-3);
        // The mask of the backward product itself instead of the first layer's.
        let wrong = fused_with(|p, _| p.gt(0.0).to_kind(Kind::Float));
        assert!((&wrong - &eager).abs().max().double_value(&[]) > 1e-3);
    }

    /// On a GPU: the gradient through the guard comes to use the fused steps after its
    /// checks, and they give the fp32 gradient (to each precision's rounding). Run with
    /// `--ignored` where there is a CUDA device (`bench/gpu.sh` does).
    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_the_gradient_comes_to_use_the_fused_steps_and_agrees() {
        assert!(tch::Cuda::is_available(), "no CUDA device");
        assert!(
            cublas_lt::available() && runtime_kernels::available(),
            "no cuBLASLt epilogues or run-time kernels in this build"
        );
        let device = Device::Cuda(0);
        let (obs, actions) = inputs(6);
        let exact = pack(1).action_gradient(&obs, &actions);
        let (obs, actions) = (obs.to_device(device), actions.to_device(device));
        for (precision, tol) in [
            (Precision::Fp32, 1e-5),
            (Precision::Tf32, 5e-3),
            (Precision::Bf16, 3e-2),
        ] {
            precision.apply().unwrap();
            let model = pack_on(1, device).with_precision(precision).frozen();
            let gradient = model.input_gradient();
            for _ in 0..3 {
                let _ = gradient.at(&obs, &actions);
            }
            let got = gradient.at(&obs, &actions).to_device(Device::Cpu);
            assert!(
                super::super::fused_steps::in_use(),
                "{precision}: the guard did not come to use the fused steps (its warning says why)"
            );
            let mean = (&got - &exact).abs().mean(Kind::Float).double_value(&[])
                / exact.abs().mean(Kind::Float).double_value(&[]);
            assert!(mean < tol, "{precision}: mean error {mean:.3e}");
        }
        Precision::Fp32.apply().unwrap();
    }
}
