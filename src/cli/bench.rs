//! `ebmlab bench`: throughput figures as JSON lines (ebmlab and the PyTorch eager reference).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::bench::{run, BenchOptions};
use crate::policy::Precision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchItem {
    /// One training iteration of the IBC Langevin config.
    TrainStep,
    /// Training iterations of the N-D study's MSE network (IBC's mlp_mse_best: 128 wide,
    /// 8 residual blocks, dropout 0.1), for each of --cuda-graphs: replayed as a CUDA graph
    /// (on, where the GPU takes it) or eager (off).
    MseStep,
    /// One DFO inference call (per batch size in --dfo-batches).
    Dfo,
    /// A whole evaluation: --eval-episodes episodes of 50 steps, DFO at every step.
    Eval,
    /// The scheduler's per-trial overhead: --overhead-trials trivial trials, scheduled
    /// on one CPU slot vs run in this process.
    Orchestration,
    /// Metric rows per second into a results store (one writer, then 8 at once).
    Ingest,
    /// Packed training: --pack-sizes trials of the train-step config as one batched
    /// model, in each of --precisions (beside the same packing written in PyTorch).
    Packed,
    /// Packed evaluation: --eval-pack-sizes trials' evaluations (--eval-episodes
    /// episodes, --eval-samples DFO samples, the train-step network of --hidden width) as
    /// one batched rollout, in each of --precisions.
    PackedEval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    /// CUDA device 0 when there is one, else the CPU.
    Auto,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Which figures (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<BenchItem>,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 256)]
    hidden: i64,
    #[arg(long, default_value_t = 512)]
    batch_size: i64,
    #[arg(long, default_value_t = 8)]
    negatives: i64,
    #[arg(long, default_value_t = 100)]
    langevin_steps: usize,
    #[arg(long, default_value_t = 16_384)]
    dfo_samples: i64,
    #[arg(long, default_value_t = 3)]
    dfo_iters: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    dfo_batches: Vec<i64>,
    #[arg(long, default_value_t = 100)]
    eval_episodes: usize,
    /// Width of the evaluated network (the quickstart's).
    #[arg(long, default_value_t = 128)]
    eval_hidden: i64,
    /// DFO samples per step in the evaluation.
    #[arg(long, default_value_t = 1024)]
    eval_samples: i64,
    #[arg(long, default_value_t = 8)]
    overhead_trials: usize,
    #[arg(long, default_value_t = 200_000)]
    ingest_rows: usize,
    /// Also measure metric ingest into this PostgreSQL database (a URL).
    #[arg(long, value_parser = super::parse_database)]
    ingest_postgres: Option<crate::store::Database>,
    /// Pack sizes for the packed figures.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pack_sizes: Vec<usize>,
    /// Pack sizes for the packed evaluation figures.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    eval_pack_sizes: Vec<usize>,
    /// Precisions for the packed figures (default: fp32, tf32, bf16 on a GPU; fp32 on
    /// the CPU).
    #[arg(long, value_delimiter = ',', value_parser = parse_precision)]
    precisions: Vec<Precision>,
    /// Packed training with the Langevin chains as CUDA graphs (`on`), eager (`off`), or
    /// both (default: on,off on a GPU; off on the CPU, which has no graphs).
    #[arg(long, value_delimiter = ',', value_parser = parse_on_off)]
    cuda_graphs: Vec<bool>,
    /// Packed training with a Langevin step's fused kernels, the gradient's cuBLASLt ReLU
    /// epilogue and our run-time compiled kernels, and the samples' update in one kernel
    /// (`on`, where the GPU gives them), with ATen's passes only (`off`), or both (default:
    /// on).
    #[arg(long, value_delimiter = ',', value_parser = parse_on_off, default_value = "on")]
    fused_gradient: Vec<bool>,
    /// Packed training with the Langevin samples' update in one kernel of ours (`on`,
    /// where the GPU gives it), with ATen's five passes (`off`), or both (default: on).
    #[arg(long, value_delimiter = ',', value_parser = parse_on_off, default_value = "on")]
    fused_update: Vec<bool>,
    /// Python with torch for the reference figures.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_reference: bool,
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is not on or off")),
    }
}

pub fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let device = match args.device {
        DeviceArg::Cpu => tch::Device::Cpu,
        DeviceArg::Cuda if !tch::Cuda::is_available() => bail!("--device cuda: no CUDA device"),
        DeviceArg::Cuda => tch::Device::Cuda(0),
        DeviceArg::Auto => tch::Device::cuda_if_available(),
    };
    let all = args.only.is_empty();
    let python = if args.no_reference {
        None
    } else if args.python.exists() {
        Some(args.python.clone())
    } else {
        bail!(
            "{} not found: run from the repository root, pass --python, or --no-reference",
            args.python.display()
        );
    };
    let opts = BenchOptions {
        device,
        train_step: all || args.only.contains(&BenchItem::TrainStep),
        mse_step: all || args.only.contains(&BenchItem::MseStep),
        dfo: all || args.only.contains(&BenchItem::Dfo),
        eval: all || args.only.contains(&BenchItem::Eval),
        warmup: args.warmup,
        repeats: args.repeats,
        hidden: args.hidden,
        batch_size: args.batch_size,
        negatives: args.negatives,
        langevin_steps: args.langevin_steps,
        dfo_samples: args.dfo_samples,
        dfo_iters: args.dfo_iters,
        dfo_batches: args.dfo_batches,
        eval_episodes: args.eval_episodes,
        eval_hidden: args.eval_hidden,
        eval_samples: args.eval_samples,
        python,
        overhead_trials: if all || args.only.contains(&BenchItem::Orchestration) {
            args.overhead_trials
        } else {
            0
        },
        ingest_rows: if all || args.only.contains(&BenchItem::Ingest) {
            args.ingest_rows
        } else {
            0
        },
        ingest_postgres: args.ingest_postgres.clone(),
        pack_sizes: if all || args.only.contains(&BenchItem::Packed) {
            args.pack_sizes.clone()
        } else {
            Vec::new()
        },
        eval_pack_sizes: if all || args.only.contains(&BenchItem::PackedEval) {
            args.eval_pack_sizes.clone()
        } else {
            Vec::new()
        },
        precisions: match (args.precisions.is_empty(), device) {
            (false, _) => args.precisions.clone(),
            (true, tch::Device::Cpu) => vec![Precision::Fp32],
            (true, _) => vec![Precision::Fp32, Precision::Tf32, Precision::Bf16],
        },
        cuda_graphs: match (args.cuda_graphs.is_empty(), device) {
            (false, _) => args.cuda_graphs.clone(),
            (true, tch::Device::Cpu) => vec![false],
            (true, _) => vec![true, false],
        },
        fused_gradient: args.fused_gradient.clone(),
        fused_update: args.fused_update.clone(),
    };
    run(&opts, |record| {
        println!(
            "{}",
            serde_json::to_string(record).expect("records serialize")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_precision(text: &str) -> Result<Precision, String> {
    match text.parse::<Precision>()? {
        Precision::Auto => Err("`auto`: name fp32, tf32 or bf16".into()),
        precision => Ok(precision),
    }
}
