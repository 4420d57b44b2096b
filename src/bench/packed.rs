//! Packed throughput: K trials of one config trained as one batched model, and their
//! evaluations run as one batched rollout, for each pack size and precision (the figures
//! a sweep of many seeds on one GPU depends on).

use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use tch::Device;

use super::device_waits::count_device_waits;
use super::{ibc_spec, record, time_ms, BenchOptions, BenchRecord};
use crate::eval::rollout_pack;
use crate::policy::ebm::fused_steps;
use crate::policy::{PackedPolicies, PolicySpec, Precision};
use crate::task::{episode_seeds, record_demos, Task, TaskConfig};
use crate::train::{LrSchedule, OptimConfig, PackMember, PackedTrainer, QueuedStep, TrainingSet};
use crate::trial::training_set;

/// A pack of `members` copies of the bench's config, differing in their seeds.
fn packed_trainer(
    opts: &BenchOptions,
    members: usize,
    precision: Precision,
) -> Result<PackedTrainer> {
    let task = TaskConfig::default().build()?;
    let demos: Vec<_> = record_demos(task.as_ref(), &episode_seeds(0, 200))?
        .into_iter()
        .map(|r| r.demo)
        .collect();
    let (normalizer, data) = training_set(&demos, 2, 0.05, task.info(), opts.device)?;
    let members = (0..members as u64)
        .map(|seed| PackMember {
            spec: ibc_spec(opts),
            optim: OptimConfig {
                batch_size: opts.batch_size,
                schedule: LrSchedule {
                    lr: 1e-3,
                    decay_steps: 100,
                    decay_rate: 0.99,
                    staircase: false,
                },
                seed,
            },
            data: TrainingSet {
                obs: data.obs.shallow_clone(),
                actions: data.actions.shallow_clone(),
            },
            normalizer: normalizer.clone(),
        })
        .collect();
    PackedTrainer::new(members, precision, opts.device)
}

/// One figure per (precision, pack size, CUDA graphs or not): the median step, and
/// trial-iterations per second in total (per trial: divide by the pack size), with steps
/// queued as a trial's loop queues them ([`pipelined_ms`]). A figure asked with graphs is
/// named `ebmlab-cuda-graph` only if the chains were replayed from one (the first chains
/// run eagerly too, to check it: the warm-up steps). On a GPU each figure also counts the
/// host's waits for the device's queue per step (none is the aim).
pub fn packed_training(opts: &BenchOptions, emit: &mut impl FnMut(&BenchRecord)) -> Result<()> {
    for &precision in &opts.precisions {
        precision.apply()?;
        for &members in &opts.pack_sizes {
            for &graphs in &opts.cuda_graphs {
                for &fused in &opts.fused_gradient {
                    for &update in &opts.fused_update {
                        fused_steps::GRADIENT.set_wanted(fused);
                        fused_steps::UPDATE.set_wanted(update);
                        packed_figure(opts, members, precision, graphs, update, emit)?;
                    }
                }
            }
        }
    }
    fused_steps::set_enabled(true);
    Precision::Fp32.apply()
}

/// One packed-training figure (see [`packed_training`]); the Langevin step's kernels are as
/// [`fused_steps`] was last set (`update`: whether the fused update was asked for).
fn packed_figure(
    opts: &BenchOptions,
    members: usize,
    precision: Precision,
    graphs: bool,
    update: bool,
    emit: &mut impl FnMut(&BenchRecord),
) -> Result<()> {
    let mut trainer = packed_trainer(opts, members, precision)?.cuda_graphs(graphs);
    let (times, waits) = pipelined_ms(&mut trainer, opts.device, opts.warmup, opts.repeats);
    let replayed = trainer.replaying_chains();
    if graphs && !replayed {
        tracing::warn!("K={members} {precision}: CUDA graphs asked, the chains ran eagerly");
    }
    let fused = fused_steps::in_use();
    let config = json!({
        "members": members,
        "precision": precision.to_string(),
        "cuda_graphs": replayed,
        "fused_gradient": fused,
        "fused_update": fused_steps::update_in_use(),
        "timing": "pipelined",
        "hidden": opts.hidden, "batch_size": opts.batch_size,
        "negatives": opts.negatives, "langevin_steps": opts.langevin_steps,
    });
    let mut figure = record("packed_train", opts.device, config, times);
    let name = match (replayed, fused) {
        (false, false) => "ebmlab",
        (true, false) => "ebmlab-cuda-graph",
        (false, true) => "ebmlab-fused",
        (true, true) => "ebmlab-cuda-graph-fused",
    };
    // Figures with the update's kernel refused, to set beside the others.
    figure.implementation = match update {
        true => name.to_owned(),
        false => format!("{name}-eager-update"),
    };
    figure.per_second = Some(members as f64 * 1e3 / figure.median_ms);
    figure.device_waits_per_step = waits.map(|w| w as f64 / opts.repeats as f64);
    emit(&figure);
    Ok(())
}

/// Milliseconds per iteration as a trial's loop gets them: each iteration is queued before
/// the previous one's metrics are read, so one interval runs from one read to the next.
/// After `warmup` iterations, `repeats` intervals; on a GPU with the host's waits for the
/// device's queue counted over them.
fn pipelined_ms(
    trainer: &mut PackedTrainer,
    device: Device,
    warmup: usize,
    repeats: usize,
) -> (Vec<f64>, Option<u64>) {
    let mut previous = trainer.queue_step();
    let mut next = |previous: &mut QueuedStep| {
        let queued = trainer.queue_step();
        std::mem::replace(previous, queued).metrics();
    };
    for _ in 0..warmup {
        next(&mut previous);
    }
    let (times, waits) = count_device_waits(|| {
        let mut mark = Instant::now();
        (0..repeats)
            .map(|_| {
                next(&mut previous);
                let interval = mark.elapsed().as_secs_f64() * 1e3;
                mark = Instant::now();
                interval
            })
            .collect::<Vec<f64>>()
    });
    previous.metrics();
    let waits = waits.filter(|_| matches!(device, Device::Cuda(_)));
    (times, waits)
}

/// One figure per (precision, pack size): the median time of one whole evaluation of every
/// member (`eval_episodes` episodes of 50 steps, `eval_samples` DFO samples, the members'
/// untrained weights: the work is a trained policy's), and member evaluations per second.
pub fn packed_evaluation(opts: &BenchOptions, emit: &mut impl FnMut(&BenchRecord)) -> Result<()> {
    let task = TaskConfig::default().build()?;
    let seeds = episode_seeds(0, opts.eval_episodes);
    for &precision in &opts.precisions {
        for &members in &opts.eval_pack_sizes {
            let trainer = packed_trainer(opts, members, Precision::Fp32)?;
            let mut spec = ibc_spec(opts);
            if let PolicySpec::Ebm { inference, .. } = &mut spec {
                inference.samples = opts.eval_samples;
                inference.precision = precision;
            }
            // The training pack's width (`--hidden`): the networks are its members'.
            let normalizer = &trainer.member(0).normalizer;
            let policies =
                PackedPolicies::new(trainer.model(), &vec![(&spec, normalizer); members])?;
            let tasks: Vec<&dyn Task> = vec![task.as_ref(); members];
            let member_seeds = vec![seeds.clone(); members];
            let sampling: Vec<u64> = (0..members as u64).collect();
            // A whole evaluation warms caches well enough after one run.
            let times = time_ms(opts.device, opts.warmup.min(1), opts.repeats, || {
                rollout_pack(&tasks, &policies, &member_seeds, &sampling).expect("rollout runs");
            });
            let config = json!({
                "members": members,
                "precision": precision.to_string(),
                "hidden": opts.hidden, "episodes": opts.eval_episodes,
                "samples": opts.eval_samples, "iters": opts.dfo_iters, "n_steps": 50, "n_dim": 2,
            });
            let mut figure = record("packed_eval", opts.device, config, times);
            figure.per_second = Some(members as f64 * 1e3 / figure.median_ms);
            emit(&figure);
        }
    }
    Ok(())
}
