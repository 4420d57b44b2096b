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
use super::step_graph::{relative_difference, Replay, StepGraph, AGREEMENT};
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
    graph: StepGraph,
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
            graph: StepGraph::Off,
        })
    }

    /// Whether iterations may be replayed from a CUDA graph on a GPU (`resources.cuda_graphs`;
    /// off by default here): the policies whose iteration reads nothing from the host are
    /// captured after their first eager iteration and replayed once a replay matched an
    /// eager step (`step_graph`).
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.graph = StepGraph::for_spec(&self.spec, self.vs.device().is_cuda(), on);
        self
    }

    /// Whether iterations are now replayed from a CUDA graph.
    pub fn replaying_steps(&self) -> bool {
        self.graph.replaying()
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
        self.seed_iteration();
        let lr = self.optim.schedule.at(self.step);
        let queued = match std::mem::replace(&mut self.graph, StepGraph::Off) {
            StepGraph::Off => self.eager_step(lr),
            // An eager iteration first (in this process): its gradients exist and
            // libtorch's lazy set-up is done before anything is captured.
            StepGraph::Pending if !self.has_gradients() => {
                self.graph = StepGraph::Pending;
                self.eager_step(lr)
            }
            StepGraph::Pending => self.capture_step(lr),
            StepGraph::Checking(replay) => self.checked_step(replay, lr),
            StepGraph::Replaying(replay) => match replay.run(lr) {
                Ok(scalars) => {
                    self.adam.count_update();
                    self.graph = StepGraph::Replaying(replay);
                    QueuedStep::new(self.step + 1, vec![lr], &scalars)
                }
                Err(e) => {
                    tracing::warn!("{e:#}: training steps are eager from now");
                    // A replay moves the generator on before it launches: the iteration's
                    // draws start again from its seed.
                    self.seed_iteration();
                    self.eager_step(lr)
                }
            },
        };
        self.step += 1;
        queued
    }

    /// Seeds libtorch's generator for the current iteration (its batch, counter-examples
    /// and dropout), replayed or not.
    fn seed_iteration(&self) {
        tch::manual_seed(torch_seed(derive_seed(self.optim.seed, self.step)));
    }

    fn eager_step(&mut self, lr: f64) -> QueuedStep {
        let scalars = self.gradients();
        // Queued before the update: the copy then runs as soon as the scalars exist.
        let queued = QueuedStep::new(self.step + 1, vec![lr], &scalars);
        self.adam.step(lr);
        queued
    }

    /// The iteration run once for real and captured; where either fails, the weights are
    /// put back and the iteration runs eagerly (as every later one).
    fn capture_step(&mut self, lr: f64) -> QueuedStep {
        let before = self.adam.snapshot();
        let captured = self.adam.prepare_capture().and_then(|()| {
            Replay::capture(lr, self.vs.device(), |rate| {
                let scalars = self.gradients();
                if let Err(e) = self.adam.captured_update(rate) {
                    panic!("{e:#}");
                }
                scalars
            })
        });
        match captured {
            Ok((replay, scalars)) => {
                self.adam.count_update();
                self.graph = StepGraph::Checking(replay);
                QueuedStep::new(self.step + 1, vec![lr], &scalars)
            }
            Err(e) => {
                tracing::warn!("{e:#}: training steps stay eager");
                self.adam.restore_snapshot(&before);
                self.seed_iteration();
                self.eager_step(lr)
            }
        }
    }

    /// The graph's first replay, taken back and run eagerly from the same weights: the
    /// graph is kept where both computed the same gradients. The eager step stands.
    fn checked_step(&mut self, replay: Replay, lr: f64) -> QueuedStep {
        let before = self.adam.snapshot();
        let replayed = replay.run(lr).map(|_| self.gradient_copies());
        self.adam.restore_snapshot(&before);
        self.seed_iteration();
        let queued = self.eager_step(lr);
        match replayed {
            // The graph's update is the fused one: if the eager step just gave it up, the
            // graph cannot be kept either.
            Ok(_) if !self.adam.is_fused() => {
                tracing::warn!("Adam's fused update was refused: training steps stay eager");
            }
            Ok(replayed) => {
                let diff = relative_difference(&replayed, &self.gradient_copies());
                if diff <= AGREEMENT {
                    tracing::info!(
                        "training steps replayed as a CUDA graph (its gradients within {diff:.1e} of an eager step's)"
                    );
                    self.graph = StepGraph::Replaying(replay);
                } else {
                    tracing::warn!(
                        "a CUDA graph's training step differs from the eager one by {diff:.1e} (relative): training steps stay eager"
                    );
                }
            }
            Err(e) => tracing::warn!("{e:#}: training steps stay eager"),
        }
        queued
    }

    /// One iteration's gradients, everything read from the device: a batch drawn, the
    /// loss, its gradients; returns the scalars `[SCALARS, 1]` (the update is the caller's).
    fn gradients(&self) -> Tensor {
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
        Tensor::stack(&scalars, 0).view([-1, 1])
    }

    /// The weights' gradients where they exist (none before the first backward pass).
    fn gradients_defined(&self) -> Vec<Tensor> {
        self.vs
            .trainable_variables()
            .iter()
            .map(|p| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    fn has_gradients(&self) -> bool {
        !self.gradients_defined().is_empty()
    }

    /// Copies of the weights' gradients.
    fn gradient_copies(&self) -> Vec<Tensor> {
        self.gradients_defined().iter().map(Tensor::copy).collect()
    }

    /// L2 norm of all weight gradients, as a scalar tensor on the training device.
    fn gradient_norm(&self) -> Tensor {
        let grads = self.gradients_defined();
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
        // A captured graph counted the optimizer's steps on the device from where it was:
        // captured again from the restored state.
        if !matches!(self.graph, StepGraph::Off) {
            self.graph = StepGraph::Pending;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ebm::{EbmLossConfig, NegativeKind};
    use crate::policy::{InferenceConfig, NetConfig};

    /// A trainer of `spec` on 256 synthetic windows (2 x 8 observations, 2-D actions).
    fn trainer(spec: PolicySpec, device: Device, graphs: bool) -> Trainer {
        let rows = 256usize;
        let obs: Vec<f32> = (0..rows * 2 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        let actions: Vec<f32> = (0..rows * 2).map(|i| (i as f32 * 0.11).cos()).collect();
        trainer_on(spec, device, graphs, obs, actions)
    }

    /// A trainer of `spec` on the windows `obs` (rows of 2 x 8) and `actions` (rows of 2).
    fn trainer_on(
        spec: PolicySpec,
        device: Device,
        graphs: bool,
        obs: Vec<f32>,
        actions: Vec<f32>,
    ) -> Trainer {
        let rows = actions.len() / 2;
        let normalizer =
            Normalizer::fit(&obs, 8, &actions, 2, 0.05, (&[-1.0, -1.0], &[1.0, 1.0])).unwrap();
        let data = TrainingSet {
            obs: Tensor::from_slice(&obs)
                .view([rows as i64, 2, 8])
                .to_device(device),
            actions: Tensor::from_slice(&actions)
                .view([rows as i64, 2])
                .to_device(device),
        };
        let optim = OptimConfig {
            batch_size: 64,
            schedule: LrSchedule {
                lr: 1e-3,
                decay_steps: 1,
                decay_rate: 0.9,
                staircase: false,
            },
            seed: 3,
        };
        Trainer::new(spec, optim, data, normalizer, device)
            .unwrap()
            .cuda_graphs(graphs)
    }

    /// Copies of the trainer's weights.
    fn weights(t: &Trainer) -> Vec<Tensor> {
        t.vs.trainable_variables()
            .iter()
            .map(Tensor::copy)
            .collect()
    }

    fn net() -> NetConfig {
        NetConfig {
            hidden: 64,
            blocks: 2,
            dropout: 0.1,
            layer_norm: false,
            ..Default::default()
        }
    }

    /// Eight iterations replayed from a CUDA graph against eight eager ones: the same
    /// losses step by step (each draws its own batch and dropout; a graph that replayed
    /// the captured draws, or a captured learning rate, would differ) and the same weights.
    fn replayed_steps_are_eager_steps(spec: PolicySpec) {
        let device = Device::Cuda(0);
        let (mut eager, mut replayed) = (
            trainer(spec.clone(), device, false),
            trainer(spec, device, true),
        );
        let mut losses = Vec::new();
        for step in 0..8 {
            let (a, b) = (eager.train_step(), replayed.train_step());
            assert_eq!((a.step, a.lr), (b.step, b.lr));
            let diff = (a.loss - b.loss).abs() / a.loss.abs().max(1e-6);
            assert!(
                diff < 1e-4,
                "step {step}: loss {} eager, {} replayed",
                a.loss,
                b.loss
            );
            losses.push(a.loss);
        }
        assert!(replayed.replaying_steps(), "the graph was checked and kept");
        assert!(!eager.replaying_steps());
        assert!(losses.windows(2).all(|w| w[0] != w[1]), "{losses:?}");
        assert_eq!(replayed.adam.steps(), 8);
        let diff = relative_difference(&weights(&replayed), &weights(&eager));
        assert!(diff < 1e-5, "weights differ by {diff:e}");
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_mse_training_steps_replay_as_a_cuda_graph_and_match_eager_ones() {
        replayed_steps_are_eager_steps(PolicySpec::Mse { net: net() });
    }

    /// InfoNCE on 16 uniform counter-examples, the gradient penalty as asked.
    fn uniform_loss(grad_penalty: bool) -> EbmLossConfig {
        let mut loss = EbmLossConfig::default();
        loss.negatives.kind = NegativeKind::Uniform;
        loss.negatives.count = 16;
        loss.grad_penalty.enabled = grad_penalty;
        loss
    }

    fn energy_net() -> NetConfig {
        NetConfig {
            dropout: 0.0,
            ..net()
        }
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_autoregressive_training_steps_replay_as_a_cuda_graph_and_match_eager_ones() {
        replayed_steps_are_eager_steps(PolicySpec::ArEbm {
            net: energy_net(),
            loss: uniform_loss(false),
            inference: InferenceConfig::default(),
        });
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_uniform_energy_model_steps_replay_as_a_cuda_graph_and_match_eager_ones() {
        // IBC's DFO-trained config (no gradient penalty), then with the penalty, whose
        // gradient of a gradient is captured too.
        for grad_penalty in [false, true] {
            replayed_steps_are_eager_steps(PolicySpec::Ebm {
                net: energy_net(),
                loss: uniform_loss(grad_penalty),
                inference: InferenceConfig::default(),
            });
        }
    }

    #[test]
    fn a_capture_that_fails_leaves_training_as_the_eager_one() {
        // On the CPU every capture fails (Adam is not fused there, and a CPU has no CUDA
        // graphs): a trainer told to capture trains to the bit as one that never tried (an
        // update skipped or made twice would show). Every window alike and no dropout, so
        // the comparison holds whatever other test threads draw from libtorch's generator.
        let spec = PolicySpec::Mse {
            net: NetConfig {
                dropout: 0.0,
                ..net()
            },
        };
        let alike = || -> Trainer {
            let obs: Vec<f32> = (0..64 * 16)
                .map(|i| ((i % 16) as f32 * 0.37).sin())
                .collect();
            let actions: Vec<f32> = (0..64 * 2).map(|i| ((i % 2) as f32 * 0.5).cos()).collect();
            trainer_on(spec.clone(), Device::Cpu, false, obs, actions)
        };
        let (mut eager, mut tried) = (alike(), alike());
        // Their initial weights too (drawn from the shared generator).
        tried.vs.copy(&eager.vs).unwrap();
        tried.graph = StepGraph::Pending;
        for _ in 0..4 {
            assert_eq!(eager.train_step(), tried.train_step());
        }
        assert!(matches!(tried.graph, StepGraph::Off), "one try, then eager");
        assert_eq!(tried.adam.steps(), 4);
        assert_eq!(relative_difference(&weights(&tried), &weights(&eager)), 0.0);
    }
}
