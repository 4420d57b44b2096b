//! One trial end to end: demos -> windows and normalizer -> training with periodic
//! checkpoints and evaluations -> final evaluation. A library function with no global
//! state beyond libtorch's generator (one trial per process), so the orchestrator can run
//! many of them as worker processes.

mod metrics;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::data::{demo_files, read_demo, record_oracle_demos, Normalizer, ParticleDemo, Windows};
use crate::eval::{plot_episodes, rollout, write_episodes_csv, Actor, EpisodeRecord, EvalSummary};
use crate::spec::{parse_device, Spec};
use crate::task::particle::ParticleTask;
use crate::task::{episode_seeds, Task};
use crate::train::checkpoint::CheckpointFiles;
use crate::train::{checkpoint, OptimConfig, StepMetrics, Trainer, TrainingSet};
use metrics::CsvLog;

/// Files of a trial under `runs/<experiment>/<trial-id>/`.
#[derive(Debug, Clone)]
pub struct TrialPaths {
    pub dir: PathBuf,
}

impl TrialPaths {
    pub fn new(runs_root: &Path, spec: &Spec) -> Self {
        Self {
            dir: runs_root.join(&spec.name).join(spec.trial_id()),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn evaluations(&self) -> PathBuf {
        self.dir.join("evaluations.csv")
    }
    pub fn episodes(&self) -> PathBuf {
        self.dir.join("episodes.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    pub fn plots(&self) -> PathBuf {
        self.dir.join("plots")
    }
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub wall_seconds: f64,
    pub lr: f64,
    pub loss: f64,
    pub info_nce: f64,
    pub grad_penalty: f64,
    pub energy_positive: f64,
    pub energy_negative: f64,
    pub grad_norm: f64,
    pub iterations_per_second: f64,
}

/// What a finished trial reports (also written as `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialReport {
    pub experiment: String,
    pub trial_id: String,
    pub dir: PathBuf,
    pub policy: String,
    pub iterations: u64,
    pub resumed_from: Option<u64>,
    pub train_seconds: f64,
    pub iterations_per_second: f64,
    pub final_evaluation: EvalSummary,
}

/// How a trial stopped short.
#[derive(Debug, thiserror::Error)]
pub enum TrialStop {
    #[error("cancelled at step {step}; checkpoint saved")]
    Cancelled { step: u64 },
    #[error("loss became {value} at step {step}; the last good checkpoint is step {last_good:?}")]
    NonFiniteLoss {
        step: u64,
        value: f64,
        last_good: Option<u64>,
    },
}

/// Receives what a trial produces as it goes; the results store implements it.
pub trait TrialObserver {
    /// A row of `metrics.csv` was written.
    fn metrics(&mut self, row: &MetricsRow) -> Result<()>;
    /// A checkpoint was saved.
    fn checkpoint(&mut self, files: &CheckpointFiles) -> Result<()>;
    /// An evaluation finished (periodic or final).
    fn evaluation(&mut self, summary: &EvalSummary, episodes: &[EpisodeRecord]) -> Result<()>;
    /// The sha256 recorded for the checkpoint at `step`, if one was recorded: a trial
    /// resumes only from a checkpoint whose file still has it.
    fn recorded_checkpoint(&mut self, _step: u64) -> Result<Option<String>> {
        Ok(None)
    }
}

/// An observer that keeps nothing (the trial's files are still written).
pub struct NoObserver;

impl TrialObserver for NoObserver {
    fn metrics(&mut self, _: &MetricsRow) -> Result<()> {
        Ok(())
    }
    fn checkpoint(&mut self, _: &CheckpointFiles) -> Result<()> {
        Ok(())
    }
    fn evaluation(&mut self, _: &EvalSummary, _: &[EpisodeRecord]) -> Result<()> {
        Ok(())
    }
}

/// Settings of a run that do not change what a trial computes.
#[derive(Debug, Clone, Default)]
pub struct TrialOptions {
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Leave the periodic evaluations (`train.eval_every`) to separate evaluation jobs:
    /// the trial keeps a checkpoint at each evaluation step instead of evaluating.
    pub defer_evaluations: bool,
}

/// The demonstrations a spec asks for.
pub fn load_demos(spec: &Spec, task: &ParticleTask) -> Result<Vec<ParticleDemo>> {
    match &spec.data.path {
        Some(path) => {
            let files = demo_files(Path::new(path)).context("data.path")?;
            let mut demos = Vec::with_capacity(files.len());
            let mut bad = Vec::new();
            for file in &files {
                match read_demo(file) {
                    Ok(demo) => demos.push(demo),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            if !bad.is_empty() {
                bail!(
                    "data.path: {} of {} demo files are invalid (run `ebmlab data validate {path}`):\n  {}",
                    bad.len(),
                    files.len(),
                    bad.join("\n  ")
                );
            }
            let n_dim = spec.task.particle.n_dim;
            if let Some(d) = demos.iter().find(|d| d.n_dim() != n_dim) {
                bail!(
                    "data.path: demos are {}-D but task.n_dim is {n_dim}",
                    d.n_dim()
                );
            }
            Ok(demos)
        }
        None => Ok(
            record_oracle_demos(task, &episode_seeds(spec.data.seed, spec.data.demos))?
                .into_iter()
                .map(|r| r.demo)
                .collect(),
        ),
    }
}

/// Runs (or continues) the trial of `spec` under `runs_root`; `cancel` is polled between
/// iterations.
pub fn run_trial(
    spec: &Spec,
    runs_root: &Path,
    options: &TrialOptions,
    cancel: &AtomicBool,
    observer: &mut dyn TrialObserver,
) -> Result<TrialReport> {
    let paths = TrialPaths::new(runs_root, spec);
    if let Some(done) = completed_report(&paths, spec) {
        info!(trial = %done.trial_id, "already completed");
        return Ok(done);
    }
    fs::create_dir_all(&paths.dir).with_context(|| format!("creating {}", paths.dir.display()))?;
    fs::write(paths.config(), spec.to_toml())
        .with_context(|| format!("writing {}", paths.config().display()))?;
    let device = parse_device(&spec.resources.device)?.resolve()?;
    if spec.resources.threads > 0 {
        tch::set_num_threads(spec.resources.threads as i32);
    }
    let task = ParticleTask::new(spec.task.particle.clone()).context("[task]")?;
    let demos = load_demos(spec, &task)?;
    let windows = Windows::from_demos(&demos, spec.data.obs_seq_len);
    let info = task.info().clone();
    let normalizer = Normalizer::fit(
        &windows.observations,
        windows.obs_dim,
        &windows.actions,
        windows.action_dim,
        spec.data.boundary_buffer,
        (&info.action_low, &info.action_high),
    )?;
    let data = TrainingSet::new(&windows, &normalizer, device)?;
    let optim = OptimConfig {
        batch_size: spec.train.batch_size,
        schedule: spec.train.schedule(),
        seed: spec.train.seed,
    };
    let mut trainer = Trainer::new(spec.policy_spec(), optim, data, normalizer, device)?;
    info!(
        trial = %spec.trial_id(),
        demos = demos.len(),
        windows = windows.len(),
        device = ?device,
        "trial {} of {}",
        spec.trial_id(),
        spec.name
    );

    // Continue from the latest checkpoint, if the trial ran before.
    let ckpt_dir = paths.checkpoints();
    let resumed_from = match verified_latest(&ckpt_dir, observer)? {
        Some(files) => {
            trainer.restore(&files)?;
            info!(step = files.step, "resumed from checkpoint");
            Some(files.step)
        }
        None => None,
    };
    let start_step = trainer.step();
    let mut metrics_log = CsvLog::open::<MetricsRow>(&paths.metrics(), start_step, |r| r.step)?;
    let mut eval_log = CsvLog::open::<EvalSummary>(&paths.evaluations(), start_step, |r| r.step)?;

    let iterations = spec.train.iterations;
    let bar = progress_bar(options.progress, iterations, start_step);
    let started = Instant::now();
    let mut last_good = resumed_from;
    let mut window_start = (Instant::now(), start_step);
    while trainer.step() < iterations {
        if cancel.load(Ordering::Relaxed) {
            let files = trainer.save_checkpoint(&ckpt_dir)?;
            observer.checkpoint(&files)?;
            metrics_log.flush()?;
            return Err(TrialStop::Cancelled {
                step: trainer.step(),
            }
            .into());
        }
        let m = trainer.train_step();
        if !m.loss.is_finite() {
            metrics_log.flush()?;
            bar.abandon();
            return Err(TrialStop::NonFiniteLoss {
                step: m.step,
                value: m.loss,
                last_good,
            }
            .into());
        }
        let step = m.step;
        if step % spec.train.log_every == 0 || step == iterations {
            let (t0, s0) = window_start;
            let rate = (step - s0) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            window_start = (Instant::now(), step);
            let row = metrics_row(&m, started.elapsed().as_secs_f64(), rate);
            metrics_log.append(&row)?;
            observer.metrics(&row)?;
            bar.set_message(format!("loss {:.4}  {:.1} it/s", m.loss, rate));
        }
        // Evaluate before checkpointing: a trial killed in between redoes the evaluation.
        let eval_step =
            spec.train.eval_every > 0 && step % spec.train.eval_every == 0 && step != iterations;
        if eval_step && !options.defer_evaluations {
            let (summary, episodes) = evaluate(spec, &task, &trainer, None)?;
            observer.evaluation(&summary, &episodes)?;
            bar.println(format!(
                "step {step}: success {:.1}% [{:.1}, {:.1}]",
                100.0 * summary.success_rate,
                100.0 * summary.ci_low,
                100.0 * summary.ci_high
            ));
            eval_log.append(&summary)?;
            eval_log.flush()?;
        }
        let keep_for_evaluation = eval_step && options.defer_evaluations;
        if step % spec.train.checkpoint_every == 0 || step == iterations || keep_for_evaluation {
            metrics_log.flush()?;
            let files = trainer.save_checkpoint(&ckpt_dir)?;
            observer.checkpoint(&files)?;
            last_good = Some(step);
        }
        bar.set_position(step);
    }
    bar.finish_and_clear();
    metrics_log.flush()?;
    let train_seconds = started.elapsed().as_secs_f64();
    let trained = trainer.step() - start_step;

    let (summary, episodes) = evaluate(spec, &task, &trainer, Some(&paths))?;
    observer.evaluation(&summary, &episodes)?;
    eval_log.append(&summary)?;
    eval_log.flush()?;
    let report = TrialReport {
        experiment: spec.name.clone(),
        trial_id: spec.trial_id(),
        dir: paths.dir.clone(),
        policy: spec.policy.kind.clone(),
        iterations,
        resumed_from,
        train_seconds,
        iterations_per_second: trained as f64 / train_seconds.max(1e-9),
        final_evaluation: summary,
    };
    fs::write(
        paths.summary(),
        serde_json::to_string_pretty(&report)? + "\n",
    )
    .with_context(|| format!("writing {}", paths.summary().display()))?;
    Ok(report)
}

/// The latest checkpoint in `dir` whose model file still has the sha256 recorded for it
/// (a checkpoint never recorded is taken as it is; a changed one is passed over).
fn verified_latest(
    dir: &Path,
    observer: &mut dyn TrialObserver,
) -> Result<Option<CheckpointFiles>> {
    for &step in checkpoint::saved_steps(dir)?.iter().rev() {
        let files = CheckpointFiles::in_dir(dir, step);
        match observer.recorded_checkpoint(step)? {
            Some(recorded) if recorded != checkpoint::file_sha256(&files.model)? => warn!(
                step,
                file = %files.model.display(),
                "checkpoint differs from its recorded sha256; using an earlier one"
            ),
            _ => return Ok(Some(files)),
        }
    }
    Ok(None)
}

/// The report of a trial that already finished all its iterations.
pub fn completed_report(paths: &TrialPaths, spec: &Spec) -> Option<TrialReport> {
    let text = fs::read_to_string(paths.summary()).ok()?;
    let report: TrialReport = serde_json::from_str(&text).ok()?;
    (report.iterations == spec.train.iterations
        && report.final_evaluation.step == spec.train.iterations)
        .then_some(report)
}

/// A trial's evaluation of `actor` (weights of `step`): `eval.episodes` episodes from
/// `eval.seed` and the same sampling stream, wherever it runs (in the trial, in an
/// evaluation job, in a report's replay), so all of them give the same episodes.
pub fn evaluate_actor(
    spec: &Spec,
    task: &ParticleTask,
    actor: &dyn Actor,
    step: u64,
) -> Result<(EvalSummary, Vec<EpisodeRecord>)> {
    let started = Instant::now();
    let seeds = episode_seeds(spec.eval.seed, spec.eval.episodes);
    let records = rollout(task, actor, &seeds, spec.eval.seed)?;
    let summary = EvalSummary::from_records(step, &records, started.elapsed().as_secs_f64());
    Ok((summary, records))
}

/// Evaluates the trainer's current weights on the spec's episodes; with `paths`, also
/// writes the per-episode rows (and plots if `eval.plots`).
fn evaluate(
    spec: &Spec,
    task: &ParticleTask,
    trainer: &Trainer,
    paths: Option<&TrialPaths>,
) -> Result<(EvalSummary, Vec<EpisodeRecord>)> {
    let (summary, records) = evaluate_actor(spec, task, &trainer.policy_view(), trainer.step())?;
    if let Some(paths) = paths {
        write_episodes_csv(&paths.episodes(), &records)?;
        if spec.eval.plots {
            plot_episodes(
                &paths.plots(),
                &records,
                spec.task.particle.goal_distance as f32,
            )?;
        }
    }
    ensure!(
        summary.episodes == spec.eval.episodes,
        "evaluation lost episodes"
    );
    if summary.success_rate == 0.0 {
        warn!(step = summary.step, "no episode succeeded");
    }
    Ok((summary, records))
}

fn metrics_row(m: &StepMetrics, wall_seconds: f64, rate: f64) -> MetricsRow {
    MetricsRow {
        step: m.step,
        wall_seconds,
        lr: m.lr,
        loss: m.loss,
        info_nce: m.info_nce,
        grad_penalty: m.grad_penalty,
        energy_positive: m.energy_positive,
        energy_negative: m.energy_negative,
        grad_norm: m.grad_norm,
        iterations_per_second: rate,
    }
}

fn progress_bar(visible: bool, total: u64, position: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("train [{bar:32}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(position);
    bar
}
