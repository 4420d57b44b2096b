//! `ebmlab eval CHECKPOINT|TRIAL_DIR`: rollouts of a trained policy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::eval::{plot_episodes, rollout, write_episodes_csv, EvalSummary};
use crate::policy::{InferenceKind, LoadedPolicy, PolicySpec};
use crate::spec::{parse_device, Spec};
use crate::task::episode_seeds;
use crate::task::particle::{ParticleConfig, ParticleTask};
use crate::train::checkpoint::{self, CheckpointFiles};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model checkpoint (`step_NNNNNNN.safetensors`), a checkpoints folder, or a trial
    /// folder (its latest checkpoint).
    target: PathBuf,
    #[arg(long, default_value_t = 100)]
    episodes: usize,
    /// Base seed of the episodes (the trial's `eval.seed` by default).
    #[arg(long)]
    seed: Option<u64>,
    /// How the EBM picks actions.
    #[arg(long, value_parser = ["dfo", "langevin"])]
    inference: Option<String>,
    /// DFO samples (or Langevin samples with --inference langevin).
    #[arg(long)]
    samples: Option<i64>,
    /// One PNG per episode.
    #[arg(long)]
    plots: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder (default: `eval/step_NNNNNNN` beside the checkpoints).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The checkpoint a target names.
fn resolve(target: &Path) -> Result<CheckpointFiles> {
    if target.is_file() {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let step = name
            .strip_prefix("step_")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok())
            .with_context(|| {
                format!(
                    "{}: not a step_NNNNNNN.safetensors model file",
                    target.display()
                )
            })?;
        let dir = target.parent().unwrap_or(Path::new("."));
        return Ok(CheckpointFiles::in_dir(dir, step));
    }
    if !target.is_dir() {
        bail!("{} does not exist", target.display());
    }
    let nested = target.join("checkpoints");
    checkpoint::latest(if nested.is_dir() { &nested } else { target })
}

/// The trial's spec, when the checkpoint lies in a trial folder.
fn trial_spec(files: &CheckpointFiles) -> Option<Spec> {
    let trial = files.model.parent()?.parent()?;
    let text = std::fs::read_to_string(trial.join("config.toml")).ok()?;
    toml::from_str(&text).ok()
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let files = resolve(&args.target)?;
    let device = parse_device(&args.device)?.resolve()?;
    let mut policy = LoadedPolicy::load(&files, device)?;
    let spec = trial_spec(&files);
    let (_, _, action_dim) = policy.spec().shapes();
    let task_cfg = match &spec {
        Some(spec) => spec.task.particle.clone(),
        None => ParticleConfig {
            n_dim: action_dim as usize,
            ..Default::default()
        },
    };
    let goal_radius = task_cfg.goal_distance;
    let task = ParticleTask::new(task_cfg)?;
    if let PolicySpec::Ebm { inference, .. } = policy.spec_mut() {
        if let Some(kind) = &args.inference {
            inference.kind = if kind == "langevin" {
                InferenceKind::Langevin
            } else {
                InferenceKind::Dfo
            };
        }
        if let Some(samples) = args.samples {
            match inference.kind {
                InferenceKind::Dfo => inference.samples = samples,
                InferenceKind::Langevin => inference.langevin_samples = samples,
            }
        }
    }
    let seed = args
        .seed
        .or(spec.as_ref().map(|s| s.eval.seed))
        .unwrap_or(crate::spec::EvalSpec::default().seed);
    let seeds = episode_seeds(seed, args.episodes);
    let started = Instant::now();
    let records = rollout(&task, &policy.view(), &seeds, seed)?;
    let summary = EvalSummary::from_records(files.step, &records, started.elapsed().as_secs_f64());

    let out = args.out.clone().unwrap_or_else(|| {
        let ckpt_dir = files.model.parent().unwrap_or(Path::new("."));
        let base = ckpt_dir.parent().unwrap_or(ckpt_dir);
        base.join("eval").join(format!("step_{:07}", files.step))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_episodes_csv(&out.join("episodes.csv"), &records)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    if args.plots {
        plot_episodes(&out.join("plots"), &records, goal_radius as f32)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "step {}: success {}/{} = {:.1}% (95% CI {:.1}-{:.1}%) in {:.1} s; rows in {}",
            summary.step,
            summary.successes,
            summary.episodes,
            100.0 * summary.success_rate,
            100.0 * summary.ci_low,
            100.0 * summary.ci_high,
            summary.wall_seconds,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
