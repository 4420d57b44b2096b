//! What a trial trains with: its task, its demonstrations as normalized windows, and a
//! fresh trainer.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tch::Device;

use crate::data::{Normalizer, Windows};
use crate::policy::{acting_key, Precision};
use crate::spec::Spec;
use crate::task::{episode_seeds, read_demo_dir, record_demos, Demo, Task, TaskInfo};
use crate::train::{
    pack_shape, Learner, OptimConfig, PackMember, PackedTrainer, Trainer, TrainingSet,
};

/// The demonstrations a spec asks for: a folder in the task's file format (`data.path`),
/// or `data.demos` episodes of the task's expert from `data.seed`.
pub fn load_demos(spec: &Spec, task: &dyn Task) -> Result<Vec<Demo>> {
    let Some(path) = &spec.data.path else {
        let seeds = episode_seeds(spec.data.seed, spec.data.demos);
        return Ok(record_demos(task, &seeds)?
            .into_iter()
            .map(|r| r.demo)
            .collect());
    };
    let info = task.info();
    let format = task.demo_files().with_context(|| {
        format!(
            "data.path: the {} task has no demonstration file format; use data.demos",
            info.kind
        )
    })?;
    let demos = read_demo_dir(format, Path::new(path)).context("data.path")?;
    for demo in &demos {
        let (obs, action) = (
            demo.observations.first().map_or(0, Vec::len),
            demo.actions.first().map_or(0, Vec::len),
        );
        ensure!(
            (obs, action) == (info.obs_dim, info.action_dim),
            "data.path: demos have {obs} observation values and {action}-D actions; \
             the [task] has {} and {}-D",
            info.obs_dim,
            info.action_dim
        );
    }
    Ok(demos)
}

/// The demos' history windows of `seq_len` observations, normalized by a normalizer fitted
/// to them (sampling bounds widened by `boundary_buffer`, within the task's), on `device`.
pub fn training_set(
    demos: &[Demo],
    seq_len: usize,
    boundary_buffer: f32,
    info: &TaskInfo,
    device: Device,
) -> Result<(Normalizer, TrainingSet)> {
    let windows = Windows::from_demos(demos, seq_len);
    let normalizer = Normalizer::fit(
        &windows.observations,
        windows.obs_dim,
        &windows.actions,
        windows.action_dim,
        boundary_buffer,
        (&info.action_low, &info.action_high),
    )?;
    let data = TrainingSet::new(&windows, &normalizer, device)?;
    Ok((normalizer, data))
}

/// What one trial trains: its policy, optimisation settings, data and normalizer.
pub fn trial_member(spec: &Spec, task: &dyn Task, device: Device) -> Result<PackMember> {
    let demos = load_demos(spec, task)?;
    let (normalizer, data) = training_set(
        &demos,
        spec.data.obs_seq_len,
        spec.data.boundary_buffer,
        task.info(),
        device,
    )?;
    tracing::info!(
        trial = %spec.trial_id(),
        demos = demos.len(),
        windows = data.len(),
        device = ?device,
        "trial {} of {}",
        spec.trial_id(),
        spec.name
    );
    Ok(PackMember {
        spec: spec.policy_spec()?,
        optim: OptimConfig {
            batch_size: spec.train.batch_size,
            schedule: spec.train.schedule(),
            seed: spec.train.seed,
        },
        data,
        normalizer,
    })
}

/// Whether a trial trains in a pack (an energy model of a plain residual MLP), and the
/// shape it shares with its pack mates.
pub fn pack_key(spec: &Spec) -> Option<String> {
    let policy = spec.policy_spec().ok()?;
    pack_shape(&policy, spec.train.batch_size)
        .map(|shape| format!("{shape} precision {:?}", spec.train.precision))
}

/// Whether a trial's evaluations can run together with others' as one batched rollout,
/// and what they must share: how the policy acts, the task, and the episodes' count.
pub fn evaluation_pack_key(spec: &Spec) -> Option<String> {
    let policy = spec.policy_spec().ok()?;
    acting_key(&policy)
        .map(|key| format!("{key} task {:?} episodes {}", spec.task, spec.eval.episodes))
}

/// The precision a trial trains in on `device`: bf16 where it is asked for and the trial
/// trains in a pack (whose counter-example search runs in bf16, its loss in TF32 or fp32);
/// other networks keep fp32 tensors, whose products take TF32 on a GPU when bf16 or TF32
/// is asked for (the process's setting, which packs follow too).
pub fn training_precision(spec: &Spec, device: Device) -> Precision {
    let asked = spec.train.precision.resolve(device);
    match asked {
        Precision::Bf16 if pack_key(spec).is_some() => asked,
        Precision::Bf16 if device.is_cuda() => Precision::Tf32,
        Precision::Tf32 => asked,
        _ => Precision::Fp32,
    }
}

/// A fresh trainer for the trials' members: a pack when they pack, else a solo trainer
/// (which takes any policy, one trial).
pub fn build_learner(specs: &[&Spec], members: Vec<PackMember>, device: Device) -> Result<Learner> {
    let packs = specs.iter().all(|s| pack_key(s).is_some());
    if packs {
        let precision = training_precision(specs[0], device);
        let trainer = PackedTrainer::new(members, precision, device)?
            .cuda_graphs(specs[0].resources.cuda_graphs);
        return Ok(Learner::Pack(Box::new(trainer)));
    }
    ensure!(
        members.len() == 1,
        "only energy models of plain residual MLPs (no LayerNorm, no dropout) train in packs"
    );
    let m = members.into_iter().next().expect("one member");
    let trainer = Trainer::new(m.spec, m.optim, m.data, m.normalizer, device)?
        .cuda_graphs(specs[0].resources.cuda_graphs);
    Ok(Learner::Solo(Some(Box::new(trainer))))
}
