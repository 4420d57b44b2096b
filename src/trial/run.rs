//! Running one trial: set up, continue from the latest checkpoint, train with periodic
//! metrics, evaluations and checkpoints, then evaluate the end.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use super::evaluate::{evaluate_actor, write_final_evaluation};
use super::metrics::CsvLog;
use super::setup::build_trainer;
use super::{MetricsRow, TrialObserver, TrialOptions, TrialPaths, TrialReport, TrialStop};
use crate::checkpoint::{self, write_atomic};
use crate::eval::EvalSummary;
use crate::spec::{parse_device, Spec};
use crate::task::Task;
use crate::train::{StepMetrics, Trainer};

/// Runs (or continues) the trial of `spec` under `runs_root`; `cancel` is polled between
/// iterations.
pub fn run_trial(
    spec: &Spec,
    runs_root: &std::path::Path,
    options: &TrialOptions,
    cancel: &AtomicBool,
    observer: &mut dyn TrialObserver,
) -> Result<TrialReport> {
    let paths = TrialPaths::new(runs_root, spec);
    if let Some(done) = completed_report(&paths, spec) {
        info!(trial = %done.trial_id, "already completed");
        return Ok(done);
    }
    write_atomic(&paths.config(), spec.to_toml().as_bytes())?;
    let device = parse_device(&spec.resources.device)?.resolve()?;
    if spec.resources.threads > 0 {
        tch::set_num_threads(spec.resources.threads as i32);
    }
    let task = spec.task.build().context("[task]")?;
    checkpoint::write_task_file(&paths.checkpoints(), &spec.task)?;
    let mut trainer = build_trainer(spec, task.as_ref(), device)?;
    let resumed_from = resume_from_latest(&mut trainer, &paths, observer)?;
    let mut training = Training::open(spec, task.as_ref(), &paths, options, trainer.step())?;
    let started = Instant::now();
    let trained_from = trainer.step();
    training.run(&mut trainer, cancel, observer)?;
    let train_seconds = started.elapsed().as_secs_f64();

    let (summary, episodes) =
        evaluate_actor(spec, task.as_ref(), &trainer.policy_view(), trainer.step())?;
    write_final_evaluation(spec, task.as_ref(), &paths, &episodes)?;
    observer.evaluation(&summary, &episodes)?;
    training.record_evaluation(&summary)?;
    let report = TrialReport {
        experiment: spec.name.clone(),
        trial_id: spec.trial_id(),
        dir: paths.dir.clone(),
        policy: spec.policy.kind.clone(),
        iterations: spec.train.iterations,
        resumed_from,
        train_seconds,
        iterations_per_second: (trainer.step() - trained_from) as f64 / train_seconds.max(1e-9),
        final_evaluation: summary,
    };
    write_atomic(
        &paths.summary(),
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    Ok(report)
}

/// Continues from the latest checkpoint, if the trial ran before. A checkpoint whose bytes
/// differ from the sha256 recorded when it was written is refused: resuming from altered
/// weights would give a trial that is not the one recorded.
fn resume_from_latest(
    trainer: &mut Trainer,
    paths: &TrialPaths,
    observer: &mut dyn TrialObserver,
) -> Result<Option<u64>> {
    let dir = paths.checkpoints();
    let Some(&step) = checkpoint::saved_steps(&dir)?.last() else {
        return Ok(None);
    };
    let files = checkpoint::CheckpointFiles::in_dir(&dir, step);
    let recorded = observer.recorded_checkpoint(step)?;
    let verified = checkpoint::verify(&files, recorded.as_deref())
        .context("resuming from the latest checkpoint")?;
    trainer.restore(&verified)?;
    info!(step, "resumed from checkpoint");
    Ok(Some(step))
}

/// The training loop's state: its logs, progress bar and the last good checkpoint.
struct Training<'a> {
    spec: &'a Spec,
    task: &'a dyn Task,
    paths: &'a TrialPaths,
    options: &'a TrialOptions,
    metrics_log: CsvLog,
    eval_log: CsvLog,
    bar: ProgressBar,
    last_good: Option<u64>,
    /// Start of the current logging window: when, and at which step.
    window: (Instant, u64),
    started: Instant,
}

impl<'a> Training<'a> {
    fn open(
        spec: &'a Spec,
        task: &'a dyn Task,
        paths: &'a TrialPaths,
        options: &'a TrialOptions,
        start_step: u64,
    ) -> Result<Self> {
        Ok(Self {
            spec,
            task,
            paths,
            options,
            metrics_log: CsvLog::open::<MetricsRow>(&paths.metrics(), start_step, |r| r.step)?,
            eval_log: CsvLog::open::<EvalSummary>(&paths.evaluations(), start_step, |r| r.step)?,
            bar: progress_bar(options.progress, spec.train.iterations, start_step),
            last_good: (start_step > 0).then_some(start_step),
            window: (Instant::now(), start_step),
            started: Instant::now(),
        })
    }

    /// Trains to `train.iterations`, or until `cancel` (checkpoint saved) or a non-finite
    /// loss stops it.
    fn run(
        &mut self,
        trainer: &mut Trainer,
        cancel: &AtomicBool,
        observer: &mut dyn TrialObserver,
    ) -> Result<()> {
        let iterations = self.spec.train.iterations;
        while trainer.step() < iterations {
            if cancel.load(Ordering::Relaxed) {
                self.checkpoint(trainer, observer)?;
                return Err(TrialStop::Cancelled {
                    step: trainer.step(),
                }
                .into());
            }
            let m = trainer.train_step();
            if !m.loss.is_finite() {
                self.metrics_log.flush()?;
                self.bar.abandon();
                return Err(TrialStop::NonFiniteLoss {
                    step: m.step,
                    value: m.loss,
                    last_good: self.last_good,
                }
                .into());
            }
            self.after_step(trainer, &m, observer)?;
        }
        self.bar.finish_and_clear();
        self.metrics_log.flush()
    }

    /// Logs, evaluates and checkpoints as the spec asks at the step just taken.
    fn after_step(
        &mut self,
        trainer: &Trainer,
        m: &StepMetrics,
        observer: &mut dyn TrialObserver,
    ) -> Result<()> {
        let (spec, step) = (self.spec, m.step);
        let last = step == spec.train.iterations;
        if step % spec.train.log_every == 0 || last {
            let (t0, s0) = self.window;
            let rate = (step - s0) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            self.window = (Instant::now(), step);
            let row = metrics_row(m, self.started.elapsed().as_secs_f64(), rate);
            self.metrics_log.append(&row)?;
            observer.metrics(&row)?;
            self.bar
                .set_message(format!("loss {:.4}  {:.1} it/s", m.loss, rate));
        }
        // Evaluate before checkpointing: a trial killed in between redoes the evaluation.
        let eval_step = spec.train.eval_every > 0 && step % spec.train.eval_every == 0 && !last;
        if eval_step && !self.options.defer_evaluations {
            let (summary, episodes) =
                evaluate_actor(spec, self.task, &trainer.policy_view(), step)?;
            observer.evaluation(&summary, &episodes)?;
            self.bar.println(format!(
                "step {step}: success {:.1}% [{:.1}, {:.1}]",
                100.0 * summary.success_rate,
                100.0 * summary.ci_low,
                100.0 * summary.ci_high
            ));
            self.record_evaluation(&summary)?;
        }
        let keep_for_evaluation = eval_step && self.options.defer_evaluations;
        if step % spec.train.checkpoint_every == 0 || last || keep_for_evaluation {
            self.checkpoint(trainer, observer)?;
        }
        self.bar.set_position(step);
        Ok(())
    }

    fn checkpoint(&mut self, trainer: &Trainer, observer: &mut dyn TrialObserver) -> Result<()> {
        self.metrics_log.flush()?;
        let saved = trainer.save_checkpoint(&self.paths.checkpoints())?;
        observer.checkpoint(&saved)?;
        self.last_good = Some(saved.files.step);
        Ok(())
    }

    fn record_evaluation(&mut self, summary: &EvalSummary) -> Result<()> {
        self.eval_log.append(summary)?;
        self.eval_log.flush()
    }
}

/// The report of a trial that already finished all its iterations.
pub fn completed_report(paths: &TrialPaths, spec: &Spec) -> Option<TrialReport> {
    let text = fs::read_to_string(paths.summary()).ok()?;
    let report: TrialReport = serde_json::from_str(&text).ok()?;
    (report.iterations == spec.train.iterations
        && report.final_evaluation.step == spec.train.iterations)
        .then_some(report)
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
