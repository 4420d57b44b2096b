//! Trials of one shape trained together as one batched model ([`PackedEbm`]): per-member
//! data, batch order, counter-examples and noise (each drawn from the member's own seed in
//! its solo order), learning rate schedule and Adam moments, one loss per member. Every
//! member checkpoints, restores and acts as the solo trial it is.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::adam::Adam;
use super::step::{QueuedStep, StepMetrics};
use super::trainer::{torch_seed, OptimConfig, TrainingSet};
use crate::checkpoint::{self, write_run_files, SavedCheckpoint, VerifiedCheckpoint};
use crate::data::Normalizer;
use crate::policy::ebm::{
    packable, Bounds, CounterExampleDraws, EbmLossConfig, PackedEbm, PackedObjective, SequenceEbm,
};
use crate::policy::{NetConfig, PolicySpec, Precision};
use crate::task::derive_seed;

/// One trial of a pack: what it trains and on what.
pub struct PackMember {
    pub spec: PolicySpec,
    pub optim: OptimConfig,
    pub data: TrainingSet,
    pub normalizer: Normalizer,
}

impl PackMember {
    fn loss_config(&self) -> &EbmLossConfig {
        match &self.spec {
            PolicySpec::Ebm { loss, .. } => loss,
            PolicySpec::ArEbm { .. } | PolicySpec::Mse { .. } => {
                unreachable!("only energy models of one network pack")
            }
        }
    }

    fn bounds(&self, device: Device) -> Bounds {
        Bounds::new(
            &self.normalizer.sample_low,
            &self.normalizer.sample_high,
            device,
        )
    }
}

/// What members of one pack must share: the tensors' shapes and the loss's form. They
/// may differ in seed, data, learning rate schedule, temperature, penalty margin and
/// weight, and Langevin step sizes.
pub fn pack_shape(spec: &PolicySpec, batch_size: i64) -> Option<String> {
    let PolicySpec::Ebm { net, loss, .. } = spec else {
        return None;
    };
    if !packable(net) {
        return None;
    }
    let n = &loss.negatives;
    let p = &loss.grad_penalty;
    Some(format!(
        "net {net:?} batch {batch_size} negatives {:?} x{} refined {} steps {} dfo {} x {} \
         penalty {} {:?} {}",
        n.kind,
        n.count,
        n.refined_count(),
        n.langevin.steps,
        n.dfo_iters,
        n.dfo_noise_scale,
        p.enabled,
        p.norm,
        p.square
    ))
}

pub struct PackedTrainer {
    members: Vec<PackMember>,
    model: PackedEbm,
    adam: Adam,
    /// Each member's bounds `[A]`, kept on the device (an upload per step would stall it).
    member_bounds: Vec<Bounds>,
    /// The members' loss settings on the device and their Langevin chains (on a GPU
    /// replayed as a CUDA graph when `cuda_graphs`).
    objective: PackedObjective,
    cuda_graphs: bool,
    step: u64,
    device: Device,
}

impl PackedTrainer {
    /// A fresh pack: member k's weights are initialised exactly as its solo trainer's. On
    /// a GPU its Langevin chains are replayed as a CUDA graph (see [`Self::cuda_graphs`]).
    pub fn new(members: Vec<PackMember>, precision: Precision, device: Device) -> Result<Self> {
        ensure!(!members.is_empty(), "a pack has at least one member");
        let shape = pack_shape(&members[0].spec, members[0].optim.batch_size)
            .context("only energy models without LayerNorm or dropout pack")?;
        for (k, m) in members.iter().enumerate() {
            if pack_shape(&m.spec, m.optim.batch_size).as_ref() != Some(&shape) {
                bail!("pack member {k} has another shape than member 0: {shape}");
            }
        }
        let net = members[0].spec.net().clone();
        let states: Vec<Vec<(String, Tensor)>> = members
            .iter()
            .map(|m| fresh_weights(&net, m.optim.seed, device))
            .collect();
        let model = PackedEbm::stack(&net, precision.resolve(device), &states)?;
        let adam = Adam::new(model.named_parameters());
        let member_bounds = members.iter().map(|m| m.bounds(device)).collect();
        let objective = objective(&members, device, true);
        Ok(Self {
            members,
            model,
            adam,
            member_bounds,
            objective,
            cuda_graphs: true,
            step: 0,
            device,
        })
    }

    /// Whether the Langevin chains may be replayed as a CUDA graph on a GPU (default:
    /// yes; `resources.cuda_graphs`). Graphs change how the work is launched, not what
    /// it computes: the first chains are compared with eager ones before the graph is used.
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = on;
        self.objective.allow_cuda_graphs(on);
        self
    }

    /// Whether the Langevin chains are now replayed from a CUDA graph.
    pub fn replaying_chains(&self) -> bool {
        self.objective.replaying_chains()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn precision(&self) -> Precision {
        self.model.precision()
    }

    /// The stacked model of every member (training precision, attached to its graph).
    pub fn model(&self) -> &PackedEbm {
        &self.model
    }

    pub fn member(&self, k: usize) -> &PackMember {
        &self.members[k]
    }

    /// Member `k`'s weights under the solo model's names.
    pub fn member_state(&self, k: usize) -> Vec<(String, Tensor)> {
        self.model.member_state(k as i64)
    }

    /// One iteration of every member.
    pub fn train_step(&mut self) -> Vec<StepMetrics> {
        self.queue_step().metrics()
    }

    /// One iteration of every member, their scalars still on their way to the host.
    pub fn queue_step(&mut self) -> QueuedStep {
        let batch = self.members[0].optim.batch_size;
        let action_dim = self.model.config().action_dim;
        let (mut obs, mut actions, mut draws) = (vec![], vec![], vec![]);
        for (m, bounds) in self.members.iter().zip(&self.member_bounds) {
            // The member's draws, in its solo trainer's order: batch, starts, noise.
            tch::manual_seed(torch_seed(derive_seed(m.optim.seed, self.step)));
            let index = Tensor::randint(m.data.len(), [batch], (Kind::Int64, self.device));
            obs.push(m.data.obs.index_select(0, &index));
            actions.push(m.data.actions.index_select(0, &index));
            let negatives = &m.loss_config().negatives;
            draws.push(CounterExampleDraws::draw(
                batch, action_dim, bounds, negatives,
            ));
        }
        let lrs: Vec<f64> = self
            .members
            .iter()
            .map(|m| m.optim.schedule.at(self.step))
            .collect();

        self.adam.zero_grad();
        let loss = self.objective.loss(
            &self.model,
            &Tensor::stack(&obs, 0),
            &Tensor::stack(&actions, 0),
            CounterExampleDraws::stack(draws),
        );
        loss.total.backward();
        // Every scalar of every member, copied to the host at once without waiting.
        let scalars = Tensor::stack(
            &[
                loss.info_nce.detach() + loss.grad_penalty.detach(),
                loss.info_nce.detach(),
                loss.grad_penalty.detach(),
                loss.energy_positive,
                loss.energy_negative,
                self.gradient_norms(),
            ],
            0,
        );
        let queued = QueuedStep::new(self.step + 1, lrs.clone(), &scalars);
        self.adam.step_members(&lrs);
        self.step += 1;
        queued
    }

    /// L2 norm of each member's weight gradients, `[K]`.
    fn gradient_norms(&self) -> Tensor {
        let squares: Vec<Tensor> = self
            .model
            .named_parameters()
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| {
                g.square()
                    .flatten(1, -1)
                    .sum_dim_intlist(1, false, Kind::Float)
            })
            .collect();
        Tensor::stack(&squares, 0)
            .sum_dim_intlist(0, false, Kind::Float)
            .sqrt()
    }

    /// Member `k`'s checkpoint of the current step in `dir` (a solo trial's files).
    pub fn save_checkpoint(&self, k: usize, dir: &Path) -> Result<SavedCheckpoint> {
        let m = &self.members[k];
        write_run_files(dir, &m.spec, &m.normalizer)?;
        checkpoint::save(
            dir,
            self.step,
            |model| {
                Tensor::write_safetensors(&self.model.member_state(k as i64), model)
                    .with_context(|| format!("writing {}", model.display()))
            },
            |optimizer| self.adam.save_member(k as i64, optimizer),
        )
    }

    /// Restores every member from its checked checkpoint (all of the same step).
    pub fn restore(&mut self, checkpoints: &[VerifiedCheckpoint]) -> Result<()> {
        ensure!(
            checkpoints.len() == self.members.len(),
            "{} checkpoints for a pack of {}",
            checkpoints.len(),
            self.members.len()
        );
        let step = checkpoints[0].step();
        for (k, c) in checkpoints.iter().enumerate() {
            let files = c.files();
            ensure!(
                c.step() == step,
                "{}: step {}, the pack's other members are at step {step}",
                files.model.display(),
                c.step()
            );
            let state = Tensor::read_safetensors(&files.model)
                .with_context(|| format!("loading {}", files.model.display()))?;
            self.model
                .load_member(k as i64, &state)
                .with_context(|| format!("loading {}", files.model.display()))?;
            self.adam.load_member(k as i64, &files.optimizer)?;
        }
        ensure!(
            self.adam.steps() as u64 == step,
            "optimizer state is at step {}, the checkpoints are of step {step}",
            self.adam.steps()
        );
        self.step = step;
        Ok(())
    }

    /// Drops member `k` (its trial ended); the others go on unchanged.
    pub fn remove(&mut self, k: usize) {
        self.members.remove(k);
        self.member_bounds.remove(k);
        if self.members.is_empty() {
            return;
        }
        let keep: Vec<i64> = (0..=self.members.len() as i64)
            .filter(|&i| i != k as i64)
            .collect();
        let keep = Tensor::from_slice(&keep).to_device(self.device);
        let params: Vec<(String, Tensor)> = self
            .model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().index_select(0, &keep).set_requires_grad(true)))
            .collect();
        let net = self.model.config().clone();
        let precision = self.model.precision();
        self.model = PackedEbm::from_stacked(&net, precision, &params)
            .expect("the kept members form a pack");
        self.adam
            .retain_members(&keep, self.model.named_parameters());
        self.objective = objective(&self.members, self.device, self.cuda_graphs);
    }
}

/// The members' objective, sampling within their stacked bounds.
fn objective(members: &[PackMember], device: Device, cuda_graphs: bool) -> PackedObjective {
    let cfgs: Vec<EbmLossConfig> = members.iter().map(|m| m.loss_config().clone()).collect();
    PackedObjective::new(cfgs, &stacked_bounds(members, device), cuda_graphs)
}

/// The weights a solo trainer of `seed` starts from (the same draws in the same order).
fn fresh_weights(net: &NetConfig, seed: u64, device: Device) -> Vec<(String, Tensor)> {
    tch::manual_seed(torch_seed(derive_seed(seed, u64::MAX)));
    let vs = nn::VarStore::new(device);
    let _model = SequenceEbm::new(&vs.root(), net.clone());
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn stacked_bounds(members: &[PackMember], device: Device) -> Bounds {
    let stack = |f: &dyn Fn(&Normalizer) -> &Vec<f32>| {
        let rows: Vec<Tensor> = members
            .iter()
            .map(|m| Tensor::from_slice(f(&m.normalizer)))
            .collect();
        let a = rows[0].size()[0];
        Tensor::stack(&rows, 0)
            .view([members.len() as i64, 1, 1, a])
            .to_device(device)
    };
    Bounds {
        low: stack(&|n| &n.sample_low),
        high: stack(&|n| &n.sample_high),
    }
}
