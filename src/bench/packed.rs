//! Packed training throughput: K trials of one config trained as one batched model, for
//! each pack size and precision (the figure a sweep of many seeds on one GPU depends on).

use anyhow::Result;
use serde_json::json;

use super::{ibc_spec, record, time_ms, BenchOptions, BenchRecord};
use crate::policy::Precision;
use crate::task::{episode_seeds, record_demos, TaskConfig};
use crate::train::{LrSchedule, OptimConfig, PackMember, PackedTrainer, TrainingSet};
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

/// One figure per (precision, pack size): the median step, and trial-iterations per
/// second in total (per trial: divide by the pack size).
pub fn packed_training(opts: &BenchOptions, emit: &mut impl FnMut(&BenchRecord)) -> Result<()> {
    for &precision in &opts.precisions {
        precision.apply()?;
        for &members in &opts.pack_sizes {
            let mut trainer = packed_trainer(opts, members, precision)?;
            let times = time_ms(opts.device, opts.warmup, opts.repeats, || {
                trainer.train_step();
            });
            let config = json!({
                "members": members,
                "precision": precision.to_string(),
                "hidden": opts.hidden, "batch_size": opts.batch_size,
                "negatives": opts.negatives, "langevin_steps": opts.langevin_steps,
            });
            let mut figure = record("packed_train", opts.device, config, times);
            figure.per_second = Some(members as f64 * 1e3 / figure.median_ms);
            emit(&figure);
        }
    }
    Precision::Fp32.apply()
}
