//! One policy's training state: network, optimizer, schedule and data, advanced one
//! iteration at a time. Each iteration's randomness (batch, counter-examples, dropout) is
//! seeded from `(seed, iteration)`, so a run continued from a checkpoint at step k
//! reproduces the run that never stopped.
//!
//! libtorch's generator is process-global: run one trainer per process at a time.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::adam::Adam;
use super::schedule::LrSchedule;
use super::step::{QueuedStep, StepMetrics};
use crate::checkpoint::{self, write_run_files, SavedCheckpoint, VerifiedCheckpoint};
use crate::data::{Normalizer, Windows};
use crate::policy::ebm::{ar_ebm_loss, ebm_loss, Bounds, EbmLoss};
use crate::policy::{PolicyNet, PolicySpec, PolicyView};
use crate::task::derive_seed;

/// Optimisation settings of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub batch_size: i64,
    pub schedule: LrSchedule,
    pub seed: u64,
}

/// Normalized training windows on the training device.
#[derive(Debug)]
pub struct TrainingSet {
    /// `(M, S, D)`.
    pub obs: Tensor,
    /// `(M, A)`.
    pub actions: Tensor,
}

impl TrainingSet {
    pub fn new(windows: &Windows, normalizer: &Normalizer, device: Device) -> Result<Self> {
        ensure!(!windows.is_empty(), "no training windows");
        let mut obs = windows.observations.clone();
        normalizer.normalize_observations(&mut obs);
        let mut actions = windows.actions.clone();
        normalizer.normalize_actions(&mut actions);
        let m = windows.len() as i64;
        Ok(Self {
            obs: Tensor::from_slice(&obs)
                .view([m, windows.seq_len as i64, windows.obs_dim as i64])
                .to_device(device),
            actions: Tensor::from_slice(&actions)
                .view([m, windows.action_dim as i64])
                .to_device(device),
        })
    }

    pub fn len(&self) -> i64 {
        self.actions.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Trainer {
    spec: PolicySpec,
    optim: OptimConfig,
    vs: nn::VarStore,
    net: PolicyNet,
    adam: Adam,
    data: TrainingSet,
    normalizer: Normalizer,
    bounds: Bounds,
    step: u64,
}

impl Trainer {
    /// A fresh run: weights initialised from `optim.seed`.
    pub fn new(
        spec: PolicySpec,
        optim: OptimConfig,
        data: TrainingSet,
        normalizer: Normalizer,
        device: Device,
    ) -> Result<Self> {
        let (seq, obs_dim, action_dim) = spec.shapes();
        let (data_seq, data_obs) = (data.obs.size()[1], data.obs.size()[2]);
        ensure!(
            (data_seq, data_obs, data.actions.size()[1]) == (seq, obs_dim, action_dim),
            "the data has windows of {data_seq} x {data_obs} and {}-D actions; the policy expects {seq} x {obs_dim} and {action_dim}-D",
            data.actions.size()[1]
        );
        ensure!(optim.batch_size >= 1, "train.batch_size must be at least 1");
        tch::manual_seed(torch_seed(derive_seed(optim.seed, u64::MAX)));
        let vs = nn::VarStore::new(device);
        let net = PolicyNet::build(&vs, &spec);
        let adam = Adam::new(vs.variables());
        let bounds = Bounds::new(&normalizer.sample_low, &normalizer.sample_high, device);
        Ok(Self {
            spec,
            optim,
            vs,
            net,
            adam,
            data,
            normalizer,
            bounds,
            step: 0,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn net(&self) -> &PolicyNet {
        &self.net
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The current weights as a policy that can act (for evaluation during training).
    pub fn policy_view(&self) -> PolicyView<'_> {
        PolicyView::new(
            &self.net,
            &self.spec,
            &self.normalizer,
            &self.bounds,
            self.vs.device(),
        )
    }

    /// One iteration: sample a batch, compute the loss, update the weights.
    pub fn train_step(&mut self) -> StepMetrics {
        self.queue_step().metrics()[0]
    }

    /// One iteration, its scalars still on their way to the host.
    pub fn queue_step(&mut self) -> QueuedStep {
        tch::manual_seed(torch_seed(derive_seed(self.optim.seed, self.step)));
        let lr = self.optim.schedule.at(self.step);
        let device = self.vs.device();
        let index = Tensor::randint(
            self.data.len(),
            [self.optim.batch_size],
            (Kind::Int64, device),
        );
        let obs = self.data.obs.index_select(0, &index);
        let actions = self.data.actions.index_select(0, &index);

        self.adam.zero_grad();
        // Scalars are gathered as tensors and copied to the host together, without
        // waiting: each `double_value` would be a device synchronisation on a GPU.
        let (loss, parts) = match (&self.net, &self.spec) {
            (PolicyNet::Ebm(model), PolicySpec::Ebm { loss, .. }) => {
                with_parts(ebm_loss(model, &obs, &actions, &self.bounds, loss))
            }
            (PolicyNet::ArEbm(model), PolicySpec::ArEbm { loss, .. }) => {
                with_parts(ar_ebm_loss(model, &obs, &actions, &self.bounds, loss))
            }
            (PolicyNet::Mse(model), PolicySpec::Mse { .. }) => {
                let zero = || Tensor::zeros([], (Kind::Float, device));
                (model.loss(&obs, &actions), [zero(), zero(), zero(), zero()])
            }
            _ => unreachable!("the network is built from the spec"),
        };
        loss.backward();
        let mut scalars: Vec<Tensor> = vec![loss.detach()];
        scalars.extend(parts);
        scalars.push(self.gradient_norm());
        let scalars = Tensor::stack(&scalars, 0).view([-1, 1]);
        // Queued before the update: the copy then runs as soon as the scalars exist.
        let queued = QueuedStep::new(self.step + 1, vec![lr], &scalars);
        self.adam.step(lr);
        self.step += 1;
        queued
    }

    /// L2 norm of all weight gradients, as a scalar tensor on the training device.
    fn gradient_norm(&self) -> Tensor {
        let grads: Vec<Tensor> = self
            .vs
            .trainable_variables()
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        let refs: Vec<&Tensor> = grads.iter().collect();
        // On a GPU one pass over all of them (two launches per tensor otherwise); the CPU
        // keeps the sum it always reported.
        let fused = self
            .vs
            .device()
            .is_cuda()
            .then(|| super::foreach::norm(&refs).ok());
        fused.flatten().unwrap_or_else(|| {
            let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
            Tensor::stack(&squares, 0).sum(Kind::Float).sqrt()
        })
    }

    /// Writes the checkpoint of the current step into `dir` (plus the per-run files).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<SavedCheckpoint> {
        write_run_files(dir, &self.spec, &self.normalizer)?;
        checkpoint::save(
            dir,
            self.step,
            |model| {
                self.vs
                    .save(model)
                    .with_context(|| format!("writing {}", model.display()))
            },
            |optimizer| self.adam.save(optimizer),
        )
    }

    /// Restores weights, optimizer state and step from a checked checkpoint of this run.
    pub fn restore(&mut self, checkpoint: &VerifiedCheckpoint) -> Result<()> {
        let files = checkpoint.files();
        self.vs
            .load(&files.model)
            .with_context(|| format!("loading {}", files.model.display()))?;
        self.adam.load(&files.optimizer)?;
        ensure!(
            self.adam.steps() as u64 == files.step,
            "{}: optimizer state is at step {}, the file name says {}",
            files.optimizer.display(),
            self.adam.steps(),
            files.step
        );
        self.step = files.step;
        Ok(())
    }
}

/// An energy model's loss and its logged parts (InfoNCE, penalty, mean energies).
fn with_parts(l: EbmLoss) -> (Tensor, [Tensor; 4]) {
    let parts = [
        l.info_nce.detach(),
        l.grad_penalty.detach(),
        l.energy_positive,
        l.energy_negative,
    ];
    (l.total, parts)
}

/// libtorch takes a non-negative i64 seed.
pub(crate) fn torch_seed(seed: u64) -> i64 {
    (seed >> 1) as i64
}
