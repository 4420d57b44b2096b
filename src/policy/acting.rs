//! A trained policy loaded from a checkpoint, acting on raw observation windows.

use std::cell::OnceCell;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::ebm::Bounds;
use super::{infer_actions_prepared, PolicyNet, PolicySpec, PreparedEbm};
use crate::checkpoint::{read_run_files, VerifiedCheckpoint};
use crate::data::Normalizer;
use crate::eval::Actor;

pub struct LoadedPolicy {
    vs: nn::VarStore,
    net: PolicyNet,
    spec: PolicySpec,
    normalizer: Normalizer,
    bounds: Bounds,
    /// The step of the checkpoint it came from.
    pub step: u64,
}

impl LoadedPolicy {
    /// Rebuilds the policy of a checked checkpoint (its folder's run files, its weights).
    pub fn load(checkpoint: &VerifiedCheckpoint, device: Device) -> Result<Self> {
        let files = checkpoint.files();
        let (spec, normalizer) = read_run_files(files.dir())?;
        spec.check()
            .with_context(|| format!("{}: the policy it names", files.dir().display()))?;
        let mut vs = nn::VarStore::new(device);
        let net = PolicyNet::build(&vs, &spec);
        vs.load(&files.model)
            .with_context(|| format!("loading {}", files.model.display()))?;
        let bounds = Bounds::new(&normalizer.sample_low, &normalizer.sample_high, device);
        Ok(Self {
            vs,
            net,
            spec,
            normalizer,
            bounds,
            step: files.step,
        })
    }

    /// A policy from weights in memory (a pack member's), named as in a checkpoint.
    pub fn from_state(
        spec: &PolicySpec,
        normalizer: &Normalizer,
        state: &[(String, Tensor)],
        step: u64,
        device: Device,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let net = PolicyNet::build(&vs, spec);
        let mut variables = vs.variables();
        for (name, value) in state {
            let target = variables
                .get_mut(name)
                .with_context(|| format!("the policy has no tensor `{name}`"))?;
            anyhow::ensure!(
                target.size() == value.size(),
                "`{name}` has shape {:?}, the policy needs {:?}",
                value.size(),
                target.size()
            );
            tch::no_grad(|| target.copy_(value));
        }
        let bounds = Bounds::new(&normalizer.sample_low, &normalizer.sample_high, device);
        Ok(Self {
            vs,
            net,
            spec: spec.clone(),
            normalizer: normalizer.clone(),
            bounds,
            step,
        })
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// To change how it acts (inference settings) before acting.
    pub fn spec_mut(&mut self) -> &mut PolicySpec {
        &mut self.spec
    }

    /// The policy as an [`Actor`].
    pub fn view(&self) -> PolicyView<'_> {
        PolicyView::new(
            &self.net,
            &self.spec,
            &self.normalizer,
            &self.bounds,
            self.vs.device(),
        )
    }
}

/// What acting needs, borrowed from a [`LoadedPolicy`] or a trainer. The weights cannot
/// change while it is borrowed, so an energy model is prepared for acting once per view
/// (at its first action), not at every step of a rollout.
pub struct PolicyView<'a> {
    pub net: &'a PolicyNet,
    pub spec: &'a PolicySpec,
    pub normalizer: &'a Normalizer,
    pub bounds: &'a Bounds,
    pub device: Device,
    prepared: OnceCell<Option<PreparedEbm>>,
}

impl<'a> PolicyView<'a> {
    pub fn new(
        net: &'a PolicyNet,
        spec: &'a PolicySpec,
        normalizer: &'a Normalizer,
        bounds: &'a Bounds,
        device: Device,
    ) -> Self {
        Self {
            net,
            spec,
            normalizer,
            bounds,
            device,
            prepared: OnceCell::new(),
        }
    }

    /// Actions (`batch x action_dim`, task units) for raw observation windows
    /// (`batch x seq_len x obs_dim`, task units).
    pub fn act(&self, obs_windows: &[f32], batch: usize) -> Vec<f32> {
        let (seq, obs_dim, action_dim) = self.spec.shapes();
        let mut obs = obs_windows.to_vec();
        self.normalizer.normalize_observations(&mut obs);
        let obs = Tensor::from_slice(&obs)
            .view([batch as i64, seq, obs_dim])
            .to_device(self.device);
        let actions = tch::no_grad(|| match (self.net, self.spec) {
            (PolicyNet::Ebm(model), PolicySpec::Ebm { inference, .. }) => {
                let prepared = self.prepared.get_or_init(|| {
                    PreparedEbm::new(model, inference.precision_on(self.device, model.config()))
                });
                infer_actions_prepared(model, prepared.as_ref(), &obs, self.bounds, inference)
            }
            (PolicyNet::ArEbm(model), PolicySpec::ArEbm { inference, .. }) => {
                let rows = inference.rows_per_pass(self.device);
                let precision = inference.precision_on(self.device, model.config());
                model.infer(&obs, self.bounds, &inference.dfo(), rows, precision)
            }
            (PolicyNet::Mse(model), PolicySpec::Mse { .. }) => {
                self.bounds.clip(&model.forward(&obs, false))
            }
            _ => unreachable!("the network is built from the spec"),
        });
        let mut actions = Vec::<f32>::try_from(
            actions
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .reshape([batch as i64 * action_dim]),
        )
        .expect("a float tensor converts");
        self.normalizer.denormalize_actions(&mut actions);
        actions
    }
}

impl Actor for PolicyView<'_> {
    fn obs_seq_len(&self) -> usize {
        self.spec.shapes().0 as usize
    }

    fn act(&self, windows: &[f32], batch: usize, seed: u64) -> anyhow::Result<Vec<f32>> {
        tch::manual_seed((seed >> 1) as i64);
        Ok(PolicyView::act(self, windows, batch))
    }
}
