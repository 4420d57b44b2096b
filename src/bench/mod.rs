//! `ebmlab bench`: throughput figures as JSON lines, each beside the same work done by a
//! PyTorch eager reference (`reference.py`, run with the project's Python) in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::eval::rollout;
use crate::policy::ebm::{Bounds, EbmLossConfig, LangevinConfig, NegativesConfig};
use crate::policy::{
    infer_actions_prepared, InferenceConfig, NetConfig, PolicyNet, PolicySpec, Precision,
    PreparedEbm,
};
use crate::task::{episode_seeds, record_demos, TaskConfig};
use crate::train::{LrSchedule, OptimConfig, Trainer};
use crate::trial::training_set;

mod device_waits;
mod orchestration;
mod packed;

const REFERENCE_SCRIPT: &str = include_str!("reference.py");

/// What to measure, and how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub device: Device,
    pub train_step: bool,
    /// Iterations of the N-D study's MSE network, with and without CUDA graphs.
    pub mse_step: bool,
    pub dfo: bool,
    /// A full evaluation: `eval_episodes` particle episodes with DFO at every step.
    pub eval: bool,
    pub warmup: usize,
    pub repeats: usize,
    pub hidden: i64,
    pub batch_size: i64,
    pub negatives: i64,
    pub langevin_steps: usize,
    pub dfo_samples: i64,
    pub dfo_iters: usize,
    pub dfo_batches: Vec<i64>,
    pub eval_episodes: usize,
    pub eval_hidden: i64,
    pub eval_samples: i64,
    /// Python with torch for the reference figures; `None` skips them.
    pub python: Option<PathBuf>,
    /// Per-trial overhead of the scheduler, over this many trivial trials (0: skip).
    pub overhead_trials: usize,
    /// Metric rows written to a results store (0: skip): a SQLite file, and PostgreSQL
    /// when a URL is given.
    pub ingest_rows: usize,
    pub ingest_postgres: Option<crate::store::Database>,
    /// Packed training: pack sizes and precisions (no sizes: skip).
    pub pack_sizes: Vec<usize>,
    /// Packed evaluation: pack sizes (none: skip), in each of `precisions`.
    pub eval_pack_sizes: Vec<usize>,
    pub precisions: Vec<Precision>,
    /// Packed training with the Langevin chains replayed as CUDA graphs, eagerly, or both.
    pub cuda_graphs: Vec<bool>,
    /// Packed training with a Langevin step's fused kernels (the gradient's cuBLASLt ReLU
    /// epilogue and run-time compiled kernels, the update's kernel, where the GPU gives
    /// them), with ATen's passes only, or both.
    pub fused_gradient: Vec<bool>,
    /// Packed training with the Langevin samples' update in one kernel of ours (where the
    /// GPU gives it), with ATen's passes, or both.
    pub fused_update: Vec<bool>,
}

/// One figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    pub bench: String,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub device: String,
    pub threads: i64,
    pub config: serde_json::Value,
    pub repeats: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Items (rows) per second at the median, for throughput figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    /// Per training step on a GPU: how often the host waited for the device's queue to
    /// drain (each wait idles the GPU while the host queues the next kernels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_waits_per_step: Option<f64>,
}

pub(crate) fn time_ms(
    device: Device,
    warmup: usize,
    repeats: usize,
    mut work: impl FnMut(),
) -> Vec<f64> {
    for _ in 0..warmup {
        work();
    }
    (0..repeats)
        .map(|_| {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            let start = Instant::now();
            work();
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

pub(crate) fn record(
    name: &str,
    device: Device,
    config: serde_json::Value,
    mut times: Vec<f64>,
) -> BenchRecord {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    BenchRecord {
        bench: name.into(),
        implementation: "ebmlab".into(),
        device: format!("{device:?}").to_lowercase(),
        threads: tch::get_num_threads() as i64,
        config,
        repeats: n,
        median_ms: median,
        min_ms: times[0],
        per_second: None,
        device_waits_per_step: None,
    }
}

/// The IBC/seed particle EBM (256 x 1 block, no normalization) for 2-D.
pub(crate) fn ibc_spec(opts: &BenchOptions) -> PolicySpec {
    PolicySpec::Ebm {
        net: NetConfig {
            hidden: opts.hidden,
            layer_norm: false,
            ..Default::default()
        },
        loss: EbmLossConfig {
            negatives: NegativesConfig {
                count: opts.negatives,
                langevin: LangevinConfig {
                    steps: opts.langevin_steps,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        },
        inference: InferenceConfig {
            samples: opts.dfo_samples,
            iters: opts.dfo_iters,
            ..Default::default()
        },
    }
}

fn build_trainer(opts: &BenchOptions, spec: PolicySpec) -> Result<Trainer> {
    let task = TaskConfig::default().build()?;
    let demos: Vec<_> = record_demos(task.as_ref(), &episode_seeds(0, 200))?
        .into_iter()
        .map(|r| r.demo)
        .collect();
    let (norm, data) = training_set(&demos, 2, 0.05, task.info(), opts.device)?;
    let optim = OptimConfig {
        batch_size: opts.batch_size,
        schedule: LrSchedule {
            lr: 1e-3,
            decay_steps: 100,
            decay_rate: 0.99,
            staircase: false,
        },
        seed: 0,
    };
    Trainer::new(spec, optim, data, norm, opts.device)
}

/// Iterations of the N-D study's MSE network (IBC's mlp_mse_best, 2-D task), 50 per timed
/// run: eager, and replayed as a CUDA graph where `opts.cuda_graphs` asks and the trainer
/// took it (the figure says whether it replayed).
fn mse_steps(opts: &BenchOptions, emit: &mut impl FnMut(&BenchRecord)) -> Result<()> {
    const STEPS: usize = 50;
    let spec = PolicySpec::Mse {
        net: NetConfig {
            hidden: 128,
            blocks: 8,
            dropout: 0.1,
            layer_norm: false,
            ..Default::default()
        },
    };
    let mut graphs = opts.cuda_graphs.clone();
    if graphs.is_empty() {
        graphs.push(false);
    }
    for on in graphs {
        let mut trainer = build_trainer(opts, spec.clone())?.cuda_graphs(on);
        // The first iterations capture and check the graph: part of the warm-up.
        for _ in 0..3 {
            trainer.train_step();
        }
        let times = time_ms(opts.device, opts.warmup, opts.repeats, || {
            let mut last = None;
            for _ in 0..STEPS {
                last = Some(trainer.queue_step());
            }
            last.expect("steps ran").metrics();
        });
        let config = json!({
            "net": "mse 128 wide, 8 blocks, dropout 0.1", "batch": opts.batch_size,
            "steps": STEPS, "cuda_graphs": trainer.replaying_steps(),
        });
        let mut figure = record("mse_steps", opts.device, config, times);
        figure.per_second = Some(STEPS as f64 * 1e3 / figure.median_ms);
        emit(&figure);
    }
    Ok(())
}

/// Runs the selected benchmarks, handing each figure to `emit` as soon as it is measured.
pub fn run(opts: &BenchOptions, mut emit: impl FnMut(&BenchRecord)) -> Result<()> {
    if opts.overhead_trials > 0 {
        orchestration::trial_overhead(opts.overhead_trials, &mut emit)?;
    }
    if opts.ingest_rows > 0 {
        orchestration::metric_ingest(opts.ingest_rows, 8, None, &mut emit)?;
        if let Some(postgres) = &opts.ingest_postgres {
            orchestration::metric_ingest(opts.ingest_rows, 8, Some(postgres), &mut emit)?;
        }
    }
    if !opts.pack_sizes.is_empty() {
        packed::packed_training(opts, &mut emit)?;
    }
    if opts.mse_step {
        mse_steps(opts, &mut emit)?;
    }
    if !(opts.train_step || opts.dfo || opts.eval || !opts.pack_sizes.is_empty()) {
        return packed::packed_evaluation(opts, &mut emit);
    }
    let mut trainer = build_trainer(opts, ibc_spec(opts))?;
    let train_config = json!({
        "obs_dim": 8, "action_dim": 2, "hidden": opts.hidden, "blocks": 1,
        "batch_size": opts.batch_size, "negatives": opts.negatives,
        "langevin_steps": opts.langevin_steps,
    });
    if opts.train_step {
        let times = time_ms(opts.device, opts.warmup, opts.repeats, || {
            trainer.train_step();
        });
        emit(&record(
            "train_step",
            opts.device,
            train_config.clone(),
            times,
        ));
    }
    if opts.dfo {
        let (PolicyNet::Ebm(model), PolicySpec::Ebm { inference, .. }) =
            (trainer.net(), trainer.spec())
        else {
            bail!("the benchmark policy is an EBM");
        };
        let bounds = Bounds::new(&[-1.0, -1.0], &[1.0, 1.0], opts.device);
        for &precision in &opts.precisions {
            let inference = InferenceConfig {
                precision,
                ..inference.clone()
            };
            // Prepared once, as a policy acting step after step is.
            let prepared =
                PreparedEbm::new(model, inference.precision_on(opts.device, model.config()));
            for &batch in &opts.dfo_batches {
                let obs = Tensor::randn([batch, 2, 8], (Kind::Float, opts.device));
                let times = time_ms(opts.device, opts.warmup, opts.repeats, || {
                    let _ =
                        infer_actions_prepared(model, prepared.as_ref(), &obs, &bounds, &inference);
                });
                let config = json!({
                    "batch": batch, "samples": opts.dfo_samples, "iters": opts.dfo_iters,
                    "hidden": opts.hidden, "precision": precision.to_string(),
                });
                emit(&record("dfo", opts.device, config, times));
            }
        }
    }
    let eval_config = json!({
        "episodes": opts.eval_episodes, "hidden": opts.eval_hidden,
        "samples": opts.eval_samples, "iters": opts.dfo_iters, "n_steps": 50, "n_dim": 2,
    });
    if opts.eval {
        let task = TaskConfig::default().build()?;
        let seeds = episode_seeds(0, opts.eval_episodes);
        for &precision in &opts.precisions {
            let mut spec = ibc_spec(opts);
            if let PolicySpec::Ebm { net, inference, .. } = &mut spec {
                net.hidden = opts.eval_hidden;
                inference.samples = opts.eval_samples;
                inference.precision = precision;
            }
            // Untrained weights of the same shape: the work is that of a trained policy.
            let policy = build_trainer(opts, spec)?;
            // A whole evaluation warms caches well enough after one run.
            let times = time_ms(opts.device, opts.warmup.min(1), opts.repeats, || {
                rollout(task.as_ref(), &policy.policy_view(), &seeds, 0).expect("rollout runs");
            });
            let mut config = eval_config.clone();
            config["precision"] = json!(precision.to_string());
            emit(&record("eval", opts.device, config, times));
        }
    }
    // Last of ours: the heaviest figures, cut first by a caller's time limit.
    packed::packed_evaluation(opts, &mut emit)?;
    if let Some(python) = &opts.python {
        let mut only = Vec::new();
        if opts.train_step {
            only.push("train_step");
        }
        if opts.dfo {
            only.push("dfo");
        }
        if opts.eval {
            only.push("eval");
        }
        if !opts.pack_sizes.is_empty() {
            only.push("packed_train");
        }
        let settings = json!({
            "device": if opts.device.is_cuda() { "cuda" } else { "cpu" },
            "only": only, "warmup": opts.warmup, "repeats": opts.repeats,
            "train": train_config,
            "dfo": {"batches": opts.dfo_batches, "samples": opts.dfo_samples, "iters": opts.dfo_iters},
            "eval": eval_config,
            "precisions": opts.precisions.iter().map(Precision::to_string).collect::<Vec<_>>(),
            "packed": {"sizes": opts.pack_sizes},
        });
        let output = Command::new(python)
            .args(["-c", REFERENCE_SCRIPT, &settings.to_string()])
            .output()
            .with_context(|| format!("running the PyTorch reference with {}", python.display()))?;
        if !output.status.success() {
            bail!(
                "the PyTorch reference failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let figure: BenchRecord = serde_json::from_str(line)
                .with_context(|| format!("reading the reference's output line {line:?}"))?;
            emit(&figure);
        }
    }
    Ok(())
}
