//! `ebmlab data generate` and `ebmlab data validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tracing::debug;

use super::EXIT_FAILED_CHECK;
use crate::data::{
    demo_file_name, record_oracle_demos, validate_dir, write_demos, RecordedDemo, ValidationReport,
};
use crate::plot::{plot_particle_episode, EpisodePlot};
use crate::task::particle::{self, ParticleConfig, ParticleTask};
use crate::task::{episode_seeds, TASK_KINDS};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Run the task's oracle and write one JSON file per episode.
    Generate(GenerateArgs),
    /// Replay every JSON file of a folder through the environment and report drift.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Task whose oracle makes the demonstrations.
    #[arg(long, default_value = particle::KIND)]
    task: String,
    /// Number of episodes.
    #[arg(long)]
    episodes: usize,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Dimensions N of the particle task.
    #[arg(long, default_value_t = 2)]
    n_dim: usize,
    /// Base seed; episode i gets a seed derived from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random goal order per episode (IBC's multimodal oracle).
    #[arg(long)]
    multimodal: bool,
    /// Also write one PNG per episode under OUT/plots.
    #[arg(long)]
    plots: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Folder of demonstration JSON files.
    dir: PathBuf,
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

fn generate(args: GenerateArgs) -> Result<ExitCode> {
    if args.task != particle::KIND {
        bail!(
            "--task {}: demonstrations can be generated for: {}",
            args.task,
            TASK_KINDS.join(", ")
        );
    }
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let mut cfg = ParticleConfig {
        n_dim: args.n_dim,
        ..Default::default()
    };
    if args.multimodal {
        cfg = cfg.multimodal();
    }
    let task = ParticleTask::new(cfg).context("--n-dim")?;
    let seeds = episode_seeds(args.seed, args.episodes);
    let bar = progress_bar(args.episodes as u64, "generating");
    let mut successes = 0;
    for (chunk_index, chunk) in seeds.chunks(GENERATE_CHUNK).enumerate() {
        let first = chunk_index * GENERATE_CHUNK;
        let demos = record_oracle_demos(&task, chunk)?;
        write_demos(&args.out, first, &demos)?;
        if args.plots {
            write_plots(&args.out.join("plots"), first, &demos, task.config())?;
        }
        successes += demos.iter().filter(|d| d.success).count();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    debug!(seed = args.seed, plots = args.plots, "generation finished");
    println!(
        "wrote {} episodes ({}-D{}) to {}; oracle success {}/{} ({:.1}%)",
        args.episodes,
        args.n_dim,
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
    cfg: &ParticleConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    demos.par_iter().enumerate().try_for_each(|(i, recorded)| {
        let name = demo_file_name(first_index + i);
        let stem = name.trim_end_matches(".json");
        let demo = &recorded.demo;
        plot_particle_episode(
            &dir.join(format!("{stem}.png")),
            &EpisodePlot {
                title: stem,
                positions: &demo.positions,
                actions: &demo.actions,
                first_goal: &demo.first_goal,
                second_goal: &demo.second_goal,
                goal_radius: cfg.goal_distance as f32,
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
    let report = validate_dir(&args.dir, &ParticleConfig::default(), args.tolerance)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_CHECK)
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
