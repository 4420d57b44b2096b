//! How an energy-based policy picks its action: DFO or Langevin minimisation of the energy.

use std::cell::OnceCell;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::ebm::{
    dfo_minimize, langevin, ActingPack, Bounds, DfoConfig, InputGradient, LangevinConfig,
    PackedEbm, SequenceEbm,
};
use super::{NetConfig, Precision};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceKind {
    /// Derivative-free optimisation (the seed's choice).
    Dfo,
    /// Uniform samples refined by Langevin, then the lowest energy (IBC's Langevin config).
    Langevin,
    /// DFO one action dimension at a time, each with its own energy model (`ar_ebm`
    /// policies only; `samples`, `iters`, noise and temperature apply per dimension).
    AutoregressiveDfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    pub kind: InferenceKind,
    /// DFO samples per observation.
    pub samples: i64,
    pub iters: usize,
    pub noise_scale: f64,
    pub noise_shrink: f64,
    pub temperature: f64,
    /// Langevin inference: samples per observation and steps.
    pub langevin_samples: i64,
    pub langevin_steps: usize,
    /// Candidate rows evaluated in one pass; 0 picks per device (cache-sized pieces are
    /// fastest on a CPU, large ones on a GPU). Bounds memory in big rollout batches.
    pub chunk_rows: i64,
    /// What the energies are computed in: `auto` is bf16 on a GPU (fp32 with LayerNorm)
    /// and fp32 on the CPU. Sampling, softmax and the chosen actions stay fp32.
    #[serde(skip_serializing_if = "Precision::is_auto")]
    pub precision: Precision,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        let dfo = DfoConfig::default();
        Self {
            kind: InferenceKind::Dfo,
            samples: dfo.samples,
            iters: dfo.iters,
            noise_scale: dfo.noise_scale,
            noise_shrink: dfo.noise_shrink,
            temperature: dfo.temperature,
            langevin_samples: 512,
            langevin_steps: 100,
            chunk_rows: 0,
            precision: Precision::Auto,
        }
    }
}

impl InferenceConfig {
    /// Rows per pass on `device` (see `chunk_rows`).
    pub fn rows_per_pass(&self, device: Device) -> i64 {
        match (self.chunk_rows, device) {
            (0, Device::Cpu) => 1 << 12,
            (0, _) => 1 << 20,
            (rows, _) => rows,
        }
    }

    /// The precision energies are computed in on `device` for the network `net`: `auto`
    /// keeps fp32 where bf16 has no path (LayerNorm); an explicit bf16 there is refused
    /// by `PolicySpec::check`.
    pub fn precision_on(&self, device: Device, net: &NetConfig) -> Precision {
        match (self.precision, self.precision.resolve_for_inference(device)) {
            (Precision::Auto, Precision::Bf16) if net.layer_norm => Precision::Fp32,
            (_, resolved) => resolved,
        }
    }

    pub fn dfo(&self) -> DfoConfig {
        DfoConfig {
            samples: self.samples,
            iters: self.iters,
            noise_scale: self.noise_scale,
            noise_shrink: self.noise_shrink,
            temperature: self.temperature,
        }
    }
}

/// Applies `f(context, candidates)` to pieces of at most `max_rows` candidate rows and
/// joins the results. Candidates are `(.., B, K, A)` with any leading dimensions (a pack's
/// members), the context `(.., B, H)`; the result's batch and candidate dimensions sit
/// where the candidates' do (energies `(.., B, K)`, gradients `(.., B, K, A)`).
///
/// Row-wise work gives the same result in pieces, and pieces that fit in cache are
/// several times faster on a CPU than one pass over a million rows.
pub fn in_row_chunks(
    context: &Tensor,
    actions: &Tensor,
    max_rows: i64,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Tensor {
    let size = actions.size();
    let (batch_dim, k_dim) = (size.len() as i64 - 3, size.len() as i64 - 2);
    let lead: i64 = size[..batch_dim as usize].iter().product();
    let (batch, k) = (size[batch_dim as usize], size[k_dim as usize]);
    let max_rows = max_rows.max(1);
    if lead * batch * k <= max_rows {
        return f(context, actions);
    }
    let obs_per_chunk = (max_rows / (lead * k)).clamp(1, batch);
    let k_per_chunk = (max_rows / (lead * obs_per_chunk)).clamp(1, k);
    let mut rows = Vec::new();
    for start in (0..batch).step_by(obs_per_chunk as usize) {
        let len = obs_per_chunk.min(batch - start);
        let ctx = context.narrow(batch_dim, start, len);
        let acts = actions.narrow(batch_dim, start, len);
        let pieces: Vec<Tensor> = (0..k)
            .step_by(k_per_chunk as usize)
            .map(|j| f(&ctx, &acts.narrow(k_dim, j, k_per_chunk.min(k - j))))
            .collect();
        rows.push(Tensor::cat(&pieces, k_dim));
    }
    Tensor::cat(&rows, batch_dim)
}

/// A network without LayerNorm prepared for acting in one precision: a pack of one with its
/// weights cast, folded and stacked once (about twenty small operations), and for Langevin
/// inference its widened gradient layers at the first chain, so that a policy acting at
/// every step of a rollout prepares it once, not at every call.
pub struct PreparedEbm {
    precision: Precision,
    pack: PackedEbm,
    acting: ActingPack,
    gradient: OnceCell<InputGradient>,
}

impl PreparedEbm {
    /// `model` prepared for acting in `precision`, or `None` with LayerNorm (which acts as
    /// the solo model).
    pub fn new(model: &SequenceEbm, precision: Precision) -> Option<Self> {
        if model.config().layer_norm {
            return None;
        }
        // Dropout is inactive when acting; without LayerNorm the network packs.
        let cfg = NetConfig {
            dropout: 0.0,
            ..model.config().clone()
        };
        let pack = PackedEbm::stack(&cfg, precision, &[model.named_tensors()])
            .expect("a network without LayerNorm is a pack of one")
            .frozen();
        let acting = pack.acting();
        Some(Self {
            precision,
            pack,
            acting,
            gradient: OnceCell::new(),
        })
    }
}

/// The energy model as inference computes it: without LayerNorm a [`PreparedEbm`], with
/// LayerNorm the solo model.
enum EnergyModel<'a> {
    Solo(&'a SequenceEbm),
    Prepared(&'a PreparedEbm),
}

impl EnergyModel<'_> {
    /// What candidates share per observation, `(B, ..)`: the first layer's observation part
    /// (solo), or the observation part of the input rows (prepared).
    fn context(&self, obs: &Tensor) -> Tensor {
        match self {
            Self::Solo(m) => m.observation_context(obs),
            Self::Prepared(p) => p.acting.context(&obs.unsqueeze(0)).squeeze_dim(0),
        }
    }

    /// Energies `(B, N)` (fp32) of candidates `(B, N, A)`.
    fn energies(&self, context: &Tensor, actions: &Tensor) -> Tensor {
        match self {
            Self::Solo(m) => m.energies_with_context(context, actions, false),
            Self::Prepared(p) => p
                .acting
                .energies(&context.unsqueeze(0), &actions.unsqueeze(0))
                .squeeze_dim(0),
        }
    }

    /// `dE/da` `(B, N, A)` (fp32) at candidates `(B, N, A)` for observation windows
    /// `(B, S, D)`.
    fn action_gradient(&self, obs: &Tensor, actions: &Tensor) -> Tensor {
        match self {
            Self::Solo(m) => m.action_gradient(obs, actions),
            Self::Prepared(p) => p
                .gradient
                .get_or_init(|| p.pack.input_gradient())
                .at(&obs.unsqueeze(0), &actions.unsqueeze(0))
                .squeeze_dim(0),
        }
    }
}

/// Restores libtorch's fp32 matmul setting when dropped (inference may run between
/// training steps of another precision in the same process).
pub(crate) struct MatmulSetting {
    tf32: bool,
}

impl MatmulSetting {
    pub(crate) fn set(precision: Precision) -> Self {
        let saved = Self {
            tf32: Precision::tf32_enabled(),
        };
        let wanted = if precision == Precision::Tf32 {
            Precision::Tf32
        } else {
            Precision::Fp32
        };
        if let Err(e) = wanted.apply() {
            tracing::warn!("inference keeps libtorch's matmul setting: {e:#}");
        }
        saved
    }
}

impl Drop for MatmulSetting {
    fn drop(&mut self) {
        let back = if self.tf32 {
            Precision::Tf32
        } else {
            Precision::Fp32
        };
        let _ = back.apply();
    }
}

/// Lowest-energy normalized actions `(B, A)` for normalized observation windows `(B, S, D)`.
pub fn infer_actions(
    model: &SequenceEbm,
    obs: &Tensor,
    bounds: &Bounds,
    cfg: &InferenceConfig,
) -> Tensor {
    infer_actions_prepared(model, None, obs, bounds, cfg)
}

/// [`infer_actions`] with `model` already prepared for acting (used where it is prepared
/// in the precision `cfg` asks for on this device; else it is prepared for this call).
pub fn infer_actions_prepared(
    model: &SequenceEbm,
    prepared: Option<&PreparedEbm>,
    obs: &Tensor,
    bounds: &Bounds,
    cfg: &InferenceConfig,
) -> Tensor {
    let batch = obs.size()[0];
    let action_dim = model.config().action_dim;
    let precision = cfg.precision_on(obs.device(), model.config());
    let _setting = MatmulSetting::set(precision);
    let fresh;
    let prepared = match prepared {
        Some(p) if p.precision == precision && p.pack.device() == obs.device() => Some(p),
        _ => {
            fresh = PreparedEbm::new(model, precision);
            fresh.as_ref()
        }
    };
    let model = match prepared {
        Some(p) => EnergyModel::Prepared(p),
        None => EnergyModel::Solo(model),
    };
    let context = tch::no_grad(|| model.context(obs));
    let rows = cfg.rows_per_pass(obs.device());
    let energy = |a: &Tensor| in_row_chunks(&context, a, rows, |ctx, a| model.energies(ctx, a));
    let actions = match cfg.kind {
        InferenceKind::AutoregressiveDfo => {
            unreachable!("autoregressive DFO needs an ar_ebm policy (checked with the spec)")
        }
        InferenceKind::Dfo => dfo_minimize(batch, action_dim, bounds, &cfg.dfo(), energy),
        InferenceKind::Langevin => {
            let langevin_cfg = LangevinConfig {
                steps: cfg.langevin_steps,
                ..Default::default()
            };
            let init = bounds.uniform(&[batch, cfg.langevin_samples, action_dim]);
            let samples = langevin(init, bounds, &langevin_cfg, |a| {
                in_row_chunks(obs, a, rows, |obs, a| model.action_gradient(obs, a))
            });
            tch::no_grad(|| {
                let best = energy(&samples).argmin(-1, false);
                let index = best
                    .view([batch, 1, 1])
                    .expand([batch, 1, action_dim], false);
                samples.gather(1, &index, false).squeeze_dim(1)
            })
        }
    };
    actions.to_kind(Kind::Float)
}
