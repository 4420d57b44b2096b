//! `ebmlab eval CHECKPOINT|TRIAL_DIR`: rollouts of a trained policy. The checkpoint is
//! checked against the sha256 written beside it before anything is loaded.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::checkpoint::{self, read_task_file, verify, CheckpointFiles};
use crate::eval::{plot_episodes, rollout, write_episodes_csv, EvalSummary};
use crate::policy::{InferenceConfig, InferenceKind, LoadedPolicy, PolicySpec, Precision};
use crate::spec::{override_eval, parse_device, EvalSpec, Spec};
use crate::task::{episode_seeds, TaskConfig};

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
    /// How the EBM picks actions (`autoregressive_dfo` is the only way of an `ar_ebm`).
    #[arg(long, value_parser = ["dfo", "langevin", "autoregressive_dfo"])]
    inference: Option<String>,
    /// DFO samples (per dimension with autoregressive DFO; Langevin samples with
    /// --inference langevin).
    #[arg(long)]
    samples: Option<i64>,
    /// What energies are computed in: auto (bf16 on a GPU, fp32 on the CPU), fp32, tf32
    /// or bf16 (the policy's `eval.precision` by default).
    #[arg(long)]
    precision: Option<Precision>,
    /// One PNG per episode.
    #[arg(long)]
    plots: bool,
    /// Any `[eval]` key as in a spec, applied after the flags above (repeatable), e.g.
    /// `--set eval.iters=5 --set eval.noise_scale=0.1`.
    #[arg(long = "set", value_name = "eval.KEY=VALUE")]
    set: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder (default: `eval/step_NNNNNNN` beside the checkpoints, or
    /// `eval/step_NNNNNNN-2`, `-3`, ... where an earlier evaluation of that step lies).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write over an evaluation already in `--out` (refused otherwise).
    #[arg(long, requires = "out")]
    overwrite: bool,
}

/// The checkpoint a target names.
fn resolve(target: &Path) -> Result<CheckpointFiles> {
    if target.is_file() {
        return CheckpointFiles::of_model_file(target);
    }
    if !target.is_dir() {
        bail!("{} does not exist", target.display());
    }
    let nested = target.join("checkpoints");
    checkpoint::latest(if nested.is_dir() { &nested } else { target })
}

/// The trial's spec, when the checkpoint lies in a trial folder (`config.toml` beside
/// `checkpoints/`); a config that does not parse is an error, not a default.
fn trial_spec(files: &CheckpointFiles) -> Result<Option<Spec>> {
    let Some(trial) = files.dir().parent() else {
        return Ok(None);
    };
    let path = trial.join("config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let spec =
        toml::from_str(&text).with_context(|| format!("{}: not a trial config", path.display()))?;
    Ok(Some(spec))
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let files = resolve(&args.target)?;
    let checkpoint = verify(&files, None)?;
    let spec = trial_spec(&files)?;
    let task_config = match read_task_file(files.dir())? {
        Some(task) => task,
        None => spec.as_ref().map(|s| s.task.clone()).unwrap_or_default(),
    };
    let task = task_config.build()?;
    let device = parse_device(&args.device)?.resolve()?;
    let mut policy = LoadedPolicy::load(&checkpoint, device)?;
    check_shapes(&task_config, task.info(), policy.spec())?;
    let inference = policy.spec_mut().inference_mut();
    let acts_by_search = inference.is_some();
    let eval = eval_settings(&args, spec.as_ref(), inference)?;
    policy
        .spec()
        .check()
        .context("--inference, --precision or --set does not fit the checkpoint's policy")?;
    let out = output_folder(&args, &files)?;
    let seed = eval.seed;
    let seeds = episode_seeds(seed, eval.episodes);
    let started = Instant::now();
    let records = rollout(task.as_ref(), &policy.view(), &seeds, seed)?;
    let summary = EvalSummary::from_records(files.step, &records, started.elapsed().as_secs_f64());

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_episodes_csv(&out.join("episodes.csv"), &records)?;
    // What was evaluated with, since flags and `--set` may differ from the trial's spec
    // (an MSE policy has no inference settings: only its episodes).
    let used = if acts_by_search {
        toml::to_string(&eval)?
    } else {
        format!("episodes = {}\nseed = {}\n", eval.episodes, eval.seed)
    };
    std::fs::write(out.join("eval.toml"), used)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    if eval.plots {
        plot_episodes(&out.join("plots"), &records, task.as_ref())?;
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

/// Whether `dir` holds an evaluation's rows or summary.
fn holds_evaluation(dir: &Path) -> bool {
    dir.join("episodes.csv").exists() || dir.join("summary.json").exists()
}

/// Where the evaluation's files go, chosen before it runs so that an earlier evaluation is
/// never written over unasked: `--out` (refused where one lies, unless `--overwrite`), or
/// the first of `eval/step_NNNNNNN`, `eval/step_NNNNNNN-2`, ... beside the checkpoints
/// that holds none.
fn output_folder(args: &EvalArgs, files: &CheckpointFiles) -> Result<PathBuf> {
    if let Some(out) = &args.out {
        if holds_evaluation(out) && !args.overwrite {
            bail!(
                "--out {} already holds an evaluation (episodes.csv, summary.json): name \
                 another folder, or add --overwrite to replace it",
                out.display()
            );
        }
        return Ok(out.clone());
    }
    let base = files.dir().parent().unwrap_or(files.dir()).join("eval");
    let name = format!("step_{:07}", files.step);
    let free = std::iter::once(base.join(&name))
        .chain((2..).map(|n| base.join(format!("{name}-{n}"))))
        .find(|dir| !holds_evaluation(dir))
        .expect("an unbounded sequence of folders has a free one");
    Ok(free)
}

/// The evaluation's settings: the trial's episode seed (if the checkpoint lies in a trial
/// folder), the checkpoint's way of acting, then the flags, then `--set`. The resulting
/// inference settings are written back into the policy's (`None` for an MSE policy, which
/// has none).
fn eval_settings(
    args: &EvalArgs,
    trial: Option<&Spec>,
    inference: Option<&mut InferenceConfig>,
) -> Result<EvalSpec> {
    let mut eval = EvalSpec {
        episodes: args.episodes,
        seed: trial.map_or(EvalSpec::default().seed, |s| s.eval.seed),
        plots: args.plots,
        ..EvalSpec::default()
    };
    if let Some(inference) = &inference {
        eval = eval.with_inference(inference);
    }
    if let Some(seed) = args.seed {
        eval.seed = seed;
    }
    if let Some(kind) = &args.inference {
        eval.inference = match kind.as_str() {
            "langevin" => InferenceKind::Langevin,
            "autoregressive_dfo" => InferenceKind::AutoregressiveDfo,
            _ => InferenceKind::Dfo,
        };
    }
    if let Some(precision) = args.precision {
        eval.precision = precision;
    }
    if let Some(samples) = args.samples {
        match eval.inference {
            InferenceKind::Dfo | InferenceKind::AutoregressiveDfo => eval.samples = samples,
            InferenceKind::Langevin => eval.langevin_samples = samples,
        }
    }
    let eval = override_eval(&eval, &args.set)?;
    if let Some(inference) = inference {
        *inference = eval.inference();
    }
    Ok(eval)
}

/// The policy must fit the task it is evaluated in.
fn check_shapes(
    task: &TaskConfig,
    info: &crate::task::TaskInfo,
    policy: &PolicySpec,
) -> Result<()> {
    let (_, obs_dim, action_dim) = policy.shapes();
    if (obs_dim as usize, action_dim as usize) != (info.obs_dim, info.action_dim) {
        bail!(
            "the policy takes {obs_dim} observation values and gives {action_dim}-D actions; \
             the {} task has {} and {}-D (evaluate the trial folder, whose config names its task)",
            task.kind(),
            info.obs_dim,
            info.action_dim
        );
    }
    Ok(())
}
