//! Energy policies of several trials acting as one: DFO over (members x episodes x
//! samples) through one stacked network ([`PackedEbm`]), so a pack's evaluations cost
//! one launch sequence per environment step instead of one per member.
//!
//! Member k draws its DFO numbers from its own seed in its solo order, so it takes the
//! actions it takes alone (up to the summation order of batched products).

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use super::ebm::{dfo_minimize_drawn, ActingPack, Bounds, DfoConfig, DfoDraws, PackedEbm};
use super::inference::MatmulSetting;
use super::{in_row_chunks, InferenceConfig, InferenceKind, NetConfig, PolicySpec, Precision};
use crate::checkpoint::{read_run_files, VerifiedCheckpoint};
use crate::data::Normalizer;
use crate::eval::PackActor;

/// What policies must share to act as one: an energy model of one network, acting by DFO
/// with the same inference settings (so the same precision on any device). `None`: it
/// acts alone.
pub fn acting_key(spec: &PolicySpec) -> Option<String> {
    let PolicySpec::Ebm { net, inference, .. } = spec else {
        return None;
    };
    let net = NetConfig {
        dropout: 0.0, // inactive when acting
        ..net.clone()
    };
    (super::ebm::packable(&net) && inference.kind == InferenceKind::Dfo)
        .then(|| format!("{net:?} {inference:?}"))
}

/// Candidate rows (members x episodes x samples) one batched rollout takes at most: its
/// DFO numbers are drawn beforehand, about 11 floats per row for 2-D actions and 3 rounds,
/// and stacked once more (about 3 GB at this size).
const MAX_ROLLOUT_ROWS: usize = 1 << 25;

/// How many members evaluate in one batched rollout of `episodes` episodes with `samples`
/// DFO samples each (at least one).
pub fn members_per_rollout(episodes: usize, samples: i64) -> usize {
    (MAX_ROLLOUT_ROWS / (episodes.max(1) * samples.max(1) as usize)).max(1)
}

/// Members' policies acting together; built from a pack's stacked weights.
pub struct PackedPolicies {
    model: PackedEbm,
    /// `model`'s weights prepared for acting, once.
    acting: ActingPack,
    normalizers: Vec<Normalizer>,
    /// Each member's sampling bounds `[A]`, and all of them `[K, 1, 1, A]`.
    member_bounds: Vec<Bounds>,
    bounds: Bounds,
    inference: InferenceConfig,
    seq_len: i64,
    obs_dim: i64,
    device: Device,
}

impl PackedPolicies {
    /// Policies of `members` (spec and normalizer of each, in the pack's order) whose
    /// weights are `model`'s; every member must have the same [`acting_key`].
    pub fn new(model: &PackedEbm, members: &[(&PolicySpec, &Normalizer)]) -> Result<Self> {
        ensure!(
            members.len() as i64 == model.members(),
            "{} policies for a pack of {}",
            members.len(),
            model.members()
        );
        let device = model.device();
        let key = acting_key(members[0].0);
        ensure!(
            key.is_some() && members.iter().all(|(s, _)| acting_key(s) == key),
            "only energy policies of one network acting by DFO alike act together"
        );
        let PolicySpec::Ebm { inference, net, .. } = members[0].0 else {
            unreachable!("checked by the key")
        };
        let precision = inference.precision_on(device, net);
        let member_bounds: Vec<Bounds> = members
            .iter()
            .map(|(_, n)| Bounds::new(&n.sample_low, &n.sample_high, device))
            .collect();
        let stacked = |f: fn(&Bounds) -> &Tensor| {
            let parts: Vec<&Tensor> = member_bounds.iter().map(f).collect();
            Tensor::stack(&parts, 0).unsqueeze(1).unsqueeze(1)
        };
        let bounds = Bounds {
            low: stacked(|b| &b.low),
            high: stacked(|b| &b.high),
        };
        let model = model.with_precision(precision).frozen();
        let acting = {
            let _setting = MatmulSetting::set(precision);
            model.acting()
        };
        Ok(Self {
            model,
            acting,
            normalizers: members.iter().map(|(_, n)| (*n).clone()).collect(),
            member_bounds,
            bounds,
            inference: inference.clone(),
            seq_len: net.obs_seq_len,
            obs_dim: net.obs_dim,
            device,
        })
    }

    /// The policies of checked checkpoints (their folders' run files, their weights), to
    /// act together on `device`.
    pub fn load(checkpoints: &[&VerifiedCheckpoint], device: Device) -> Result<Self> {
        let mut members = Vec::with_capacity(checkpoints.len());
        let mut states = Vec::with_capacity(checkpoints.len());
        let mut first_key = None;
        for checkpoint in checkpoints {
            let files = checkpoint.files();
            let (spec, normalizer) = read_run_files(files.dir())?;
            spec.check()
                .with_context(|| format!("{}: the policy it names", files.dir().display()))?;
            let key = acting_key(&spec);
            ensure!(
                key.is_some() && (first_key.is_none() || first_key == key),
                "{}: this policy does not act like {} (only energy models of one network \
                 acting by DFO with the same settings act together)",
                files.dir().display(),
                checkpoints[0].files().dir().display()
            );
            first_key = key;
            let state = Tensor::read_safetensors(&files.model)
                .with_context(|| format!("loading {}", files.model.display()))?;
            members.push((spec, normalizer));
            states.push(
                state
                    .into_iter()
                    .map(|(name, t)| (name, t.to_device(device)))
                    .collect::<Vec<_>>(),
            );
        }
        let net = NetConfig {
            dropout: 0.0, // inactive when acting
            ..members[0].0.net().clone()
        };
        let model = PackedEbm::stack(&net, Precision::Fp32, &states)?;
        let members: Vec<(&PolicySpec, &Normalizer)> =
            members.iter().map(|(s, n)| (s, n)).collect();
        Self::new(&model, &members)
    }

    fn dfo(&self) -> DfoConfig {
        self.inference.dfo()
    }
}

impl PackActor for PackedPolicies {
    fn obs_seq_len(&self) -> usize {
        self.seq_len as usize
    }

    fn act_all(&self, windows: &[&[f32]], seeds: &[u64]) -> Result<Vec<Vec<f32>>> {
        let k = self.normalizers.len();
        ensure!(
            windows.len() == k && seeds.len() == k,
            "one window batch per member"
        );
        let window = (self.seq_len * self.obs_dim) as usize;
        let batch = windows[0].len() / window;
        ensure!(
            windows.iter().all(|w| w.len() == batch * window),
            "the members act on batches of different sizes"
        );
        let action_dim = self.model.config().action_dim;
        let dfo = self.dfo();
        let (mut obs, mut draws) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for ((w, normalizer), (seed, bounds)) in windows
            .iter()
            .zip(&self.normalizers)
            .zip(seeds.iter().zip(&self.member_bounds))
        {
            let mut w = w.to_vec();
            normalizer.normalize_observations(&mut w);
            obs.push(Tensor::from_slice(&w).view([batch as i64, self.seq_len, self.obs_dim]));
            // The member's draws, as its solo `Actor::act` makes them.
            tch::manual_seed((seed >> 1) as i64);
            draws.push(DfoDraws::draw(batch as i64, action_dim, bounds, &dfo));
        }
        let obs = Tensor::stack(&obs, 0).to_device(self.device);
        let precision = self.model.precision();
        let _setting = MatmulSetting::set(precision);
        let actions = tch::no_grad(|| {
            let context = self.acting.context(&obs);
            let rows = self.inference.rows_per_pass(self.device);
            dfo_minimize_drawn(DfoDraws::stack(&draws), &self.bounds, &dfo, |a| {
                in_row_chunks(&context, a, rows, |c, a| self.acting.energies(c, a))
            })
        });
        let actions = actions.to_kind(Kind::Float).to_device(Device::Cpu);
        (0..k)
            .map(|m| {
                let mut a = Vec::<f32>::try_from(actions.get(m as i64).reshape([-1]))?;
                self.normalizers[m].denormalize_actions(&mut a);
                Ok(a)
            })
            .collect()
    }
}
