//! `ebmlab data generate` and `ebmlab data validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tracing::debug;

use crate::exit::Exit;
use crate::plot::{plot_episode, EpisodePlot};
use crate::task::{
    demo_file_name, episode_seeds, record_demos, validate_dir, write_demos, DemoFiles,
    RecordedDemo, Task, TaskConfig, ValidationReport,
};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Run the task's oracle and write one JSON file per episode.
    Generate(GenerateArgs),
    /// Replay every JSON file of a folder through the environment and report drift.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Task whose expert makes the demonstrations.
    #[arg(long, default_value = "particle")]
    task: String,
    /// Number of episodes.
    #[arg(long)]
    episodes: usize,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Dimensions N of the task (its `n_dim` key).
    #[arg(long)]
    n_dim: Option<usize>,
    /// Base seed; episode i gets a seed derived from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random goal order per episode (IBC's multimodal oracle; the task's `multimodal`
    /// key, with `success_rule = "either_order"`).
    #[arg(long)]
    multimodal: bool,
    /// Any other task key, e.g. `--set n_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also write one PNG per episode under OUT/plots.
    #[arg(long)]
    plots: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Folder of demonstration JSON files.
    dir: PathBuf,
    /// Task whose environment replays them (its file format and parameters).
    #[arg(long, default_value = "particle")]
    task: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Largest drift (absolute, per component) between file and replay that passes.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
}

pub fn run(command: DataCommand) -> Result<ExitCode> {
    match command {
        DataCommand::Generate(args) => generate(args),
        DataCommand::Validate(args) => validate(args),
    }
}

/// Episodes generated per batch: bounds memory and moves the progress bar.
const GENERATE_CHUNK: usize = 512;

/// The task `--task`, `--n-dim`, `--multimodal` and `--set` describe.
fn task_config(args: &GenerateArgs) -> Result<TaskConfig> {
    let mut params = toml::Table::new();
    if let Some(n) = args.n_dim {
        params.insert("n_dim".into(), toml::Value::Integer(n as i64));
    }
    if args.multimodal {
        params.insert("multimodal".into(), toml::Value::Boolean(true));
        params.insert(
            "success_rule".into(),
            toml::Value::String("either_order".into()),
        );
    }
    for item in &args.set {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("--set {item}: expected KEY=VALUE"))?;
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        params.insert(key.trim().to_owned(), value);
    }
    TaskConfig::with_params(&args.task, &params)
        .with_context(|| format!("--task {} with its settings", args.task))
}

fn demo_format<'a>(task: &'a dyn Task, kind: &str) -> Result<&'a dyn DemoFiles> {
    task.demo_files()
        .with_context(|| format!("--task {kind}: the task has no demonstration file format"))
}

fn generate(args: GenerateArgs) -> Result<ExitCode> {
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let config = task_config(&args)?;
    let task = config.build()?;
    let format = demo_format(task.as_ref(), &args.task)?;
    let seeds = episode_seeds(args.seed, args.episodes);
    let bar = progress_bar(args.episodes as u64, "generating");
    let mut successes = 0;
    for (chunk_index, chunk) in seeds.chunks(GENERATE_CHUNK).enumerate() {
        let first = chunk_index * GENERATE_CHUNK;
        let demos = record_demos(task.as_ref(), chunk)?;
        write_demos(format, &args.out, first, &demos)?;
        if args.plots {
            write_plots(&args.out.join("plots"), first, &demos, task.as_ref())?;
        }
        successes += demos.iter().filter(|d| d.success).count();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    debug!(seed = args.seed, plots = args.plots, "generation finished");
    println!(
        "wrote {} episodes ({}, {}-D actions{}) to {}; expert success {}/{} ({:.1}%)",
        args.episodes,
        config.kind(),
        task.info().action_dim,
        if args.multimodal { ", multimodal" } else { "" },
        args.out.display(),
        successes,
        args.episodes,
        100.0 * successes as f64 / args.episodes as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn write_plots(
    dir: &Path,
    first_index: usize,
    demos: &[RecordedDemo],
    task: &dyn Task,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    demos.par_iter().enumerate().try_for_each(|(i, recorded)| {
        let name = demo_file_name(first_index + i);
        let stem = name.trim_end_matches(".json");
        let demo = &recorded.demo;
        plot_episode(
            &dir.join(format!("{stem}.png")),
            &EpisodePlot {
                title: stem,
                sketch: &task.sketch(&demo.observations, &demo.actions),
                success: Some(recorded.success),
            },
        )
    })
}

fn validate(args: ValidateArgs) -> Result<ExitCode> {
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        bail!(
            "--tolerance must be a non-negative number, got {}",
            args.tolerance
        );
    }
    let task = TaskConfig::default_for(&args.task)
        .and_then(|c| c.build())
        .with_context(|| format!("--task {}", args.task))?;
    let format = demo_format(task.as_ref(), &args.task)?;
    let report = validate_dir(format, &args.dir, args.tolerance)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        Exit::Failed.into()
    })
}

fn print_report(report: &ValidationReport) {
    for bad in &report.invalid_files {
        eprintln!("invalid: {}", bad.error);
    }
    println!("folder:              {}", report.folder.display());
    println!(
        "episodes:            {} of {} files",
        report.episodes, report.files
    );
    println!("invalid files:       {}", report.invalid_files.len());
    println!("max position drift:  {:e}", report.max_position_drift);
    println!("max velocity drift:  {:e}", report.max_velocity_drift);
    println!(
        "success rate:        {:.1}% ({} of {})",
        100.0 * report.success_rate,
        report.successes,
        report.episodes
    );
    println!(
        "result:              {} (tolerance {:e})",
        if report.passed { "PASSED" } else { "FAILED" },
        report.tolerance
    );
}

fn progress_bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:32}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
