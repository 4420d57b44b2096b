//! Running trials: set up, continue from the latest checkpoints, train with periodic
//! metrics, evaluations and checkpoints, then evaluate the end. Several trials of one
//! shape train together as a pack; each still has its own files, records and outcome.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use super::evaluate::{evaluate_actor, evaluate_pack, write_final_evaluation};
use super::metrics::{logged_seconds, CsvLog};
use super::setup::{build_learner, evaluation_pack_key, training_precision, trial_member};
use super::{MetricsRow, TrialObserver, TrialOptions, TrialPaths, TrialReport, TrialStop};
use crate::checkpoint::{self, write_atomic};
use crate::eval::{is_cancelled, Cancellable, EpisodeRecord, EvalSummary};
use crate::policy::members_per_rollout;
use crate::spec::{parse_device, Spec};
use crate::task::Task;
use crate::train::{Learner, QueuedStep, StepMetrics};

/// Runs (or continues) the trial of `spec` under `runs_root`; `cancel` is polled between
/// iterations.
pub fn run_trial(
    spec: &Spec,
    runs_root: &Path,
    options: &TrialOptions,
    cancel: &AtomicBool,
    observer: &mut dyn TrialObserver,
) -> Result<TrialReport> {
    run_pack(&[spec], runs_root, options, cancel, &mut [observer])
        .pop()
        .expect("one result per trial")
}

/// Runs (or continues) trials together as one pack (see [`crate::train::PackedTrainer`];
/// one trial that does not pack runs alone). Each gets its own result: a member that fails
/// leaves the pack and the others go on. `observers[i]` hears of `specs[i]`.
pub fn run_pack(
    specs: &[&Spec],
    runs_root: &Path,
    options: &TrialOptions,
    cancel: &AtomicBool,
    observers: &mut [&mut dyn TrialObserver],
) -> Vec<Result<TrialReport>> {
    let mut results: Vec<Option<Result<TrialReport>>> = specs.iter().map(|_| None).collect();
    let mut members = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let paths = TrialPaths::new(runs_root, spec);
        match completed_report(&paths, spec) {
            Some(done) => {
                info!(trial = %done.trial_id, "already completed");
                results[i] = Some(Ok(done));
            }
            None => match Member::prepare(i, spec, paths, options, cancel) {
                Ok(member) => members.push(member),
                Err(e) => results[i] = Some(Err(e)),
            },
        }
    }
    if !members.is_empty() {
        train_members(specs, members, cancel, observers, &mut results);
    }
    results
        .into_iter()
        .map(|r| r.expect("every trial has a result"))
        .collect()
}

/// Builds the pack, continues it from its checkpoints and trains it to the end.
fn train_members(
    specs: &[&Spec],
    mut members: Vec<Member>,
    cancel: &AtomicBool,
    observers: &mut [&mut dyn TrialObserver],
    results: &mut [Option<Result<TrialReport>>],
) {
    let mut learner = match build(specs, &members) {
        Ok(learner) => learner,
        Err(e) => {
            let e = format!("{e:#}");
            for m in &members {
                results[m.index] = Some(Err(anyhow!("{e}")));
            }
            return;
        }
    };
    let resumed = resume_from_latest(&mut learner, &members, observers);
    let resumed_from = match resumed {
        Ok(step) => step,
        Err(e) => {
            let e = format!("{e:#}");
            for m in &members {
                results[m.index] = Some(Err(anyhow!("{e}")));
            }
            return;
        }
    };
    for m in &mut members {
        if let Err(e) = m.open_logs(learner.step()) {
            results[m.index] = Some(Err(e));
        }
    }
    retire(&mut learner, &mut members, |m| results[m.index].is_some());
    // Members restored at their last step (stopped after their final checkpoint, before
    // their final evaluation was recorded) only evaluate: another step would train past
    // the end.
    let step = learner.step();
    for (pos, m) in members.iter_mut().enumerate() {
        if m.is_last(step) {
            let observer = &mut *observers[m.index];
            results[m.index] = Some(m.finish(&learner, pos, observer, resumed_from, 0.0));
        }
    }
    retire(&mut learner, &mut members, |m| results[m.index].is_some());
    let started = Instant::now();
    let mut run = PackRun {
        learner,
        members,
        observers,
        results,
        started,
        resumed_from,
    };
    // The last iteration queued whose metrics the host has not read yet, with the members
    // (their indices) it trained.
    let mut in_flight: Option<(Vec<usize>, QueuedStep)> = None;
    while !run.learner.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            // The step about to be saved is checked first: a non-finite loss fails it.
            if let Some(queued) = in_flight.take() {
                run.settle(queued);
            }
            run.cancel();
            return;
        }
        let trained = run.members.iter().map(|m| m.index).collect();
        let queued = run.learner.queue_step();
        // The previous iteration's metrics are read while this one runs on the device.
        if let Some(previous) = in_flight.replace((trained, queued)) {
            run.settle(previous);
        }
        // Weights that are evaluated or saved are checked (and used) before the next
        // iteration changes them.
        let step = run.learner.step();
        if run.members.iter().any(|m| m.uses_weights_at(step)) {
            run.settle(in_flight.take().expect("queued above"));
        }
    }
}

/// A pack being trained: its learner, the members still in it, and where their outcomes go.
struct PackRun<'r, 'a, 'o> {
    learner: Learner,
    members: Vec<Member<'a>>,
    observers: &'r mut [&'o mut dyn TrialObserver],
    results: &'r mut [Option<Result<TrialReport>>],
    /// When training began in this run.
    started: Instant,
    resumed_from: Option<u64>,
}

impl PackRun<'_, '_, '_> {
    /// Logs iteration `queued` of the members that trained it and are still in the pack
    /// (`trained` holds their indices), then evaluates, checkpoints and finishes them as
    /// their specs ask; ended members leave the pack.
    fn settle(&mut self, (trained, queued): (Vec<usize>, QueuedStep)) {
        let all = queued.metrics();
        let metrics: Vec<StepMetrics> = self
            .members
            .iter()
            .map(|m| {
                let at = trained.iter().position(|&i| i == m.index);
                all[at.expect("members only leave a pack")]
            })
            .collect();
        // Timed before this step's evaluation (earlier periodic evaluations and checkpoints
        // count, as they do in the logged rates).
        let train_seconds = self.started.elapsed().as_secs_f64();
        let (learner, observers) = (&self.learner, &mut *self.observers);
        let logged: Vec<Result<bool>> = self
            .members
            .iter_mut()
            .zip(&metrics)
            .map(|(m, step)| m.log_step(step, &mut *observers[m.index]))
            .collect();
        evaluate_together(learner, &mut self.members, &metrics);
        for (pos, ((m, step), logged)) in self
            .members
            .iter_mut()
            .zip(&metrics)
            .zip(logged)
            .enumerate()
        {
            let observer = &mut *observers[m.index];
            let outcome = logged
                .and_then(|last| m.after_step(learner, pos, step, last, observer))
                .and_then(|done| match done {
                    true => m
                        .finish(learner, pos, observer, self.resumed_from, train_seconds)
                        .map(Some),
                    false => Ok(None),
                });
            match outcome {
                Ok(Some(report)) => self.results[m.index] = Some(Ok(report)),
                Ok(None) => {}
                Err(e) => self.results[m.index] = Some(Err(e)),
            }
        }
        let results = &*self.results;
        retire(&mut self.learner, &mut self.members, |m| {
            results[m.index].is_some()
        });
    }

    /// Checkpoints every member at the current step and ends it as cancelled.
    fn cancel(&mut self) {
        let step = self.learner.step();
        for (pos, m) in self.members.iter_mut().enumerate() {
            let stop = m.checkpoint(&self.learner, pos, &mut *self.observers[m.index]);
            self.results[m.index] = Some(
                stop.and(Err(TrialStop::Cancelled {
                    step,
                    checkpoint: Some(step),
                }
                .into())),
            );
        }
    }
}

/// Evaluates the members that evaluate at this step together: those that act alike
/// ([`evaluation_pack_key`]) as one batched rollout per group of at most
/// [`members_per_rollout`]; each keeps its result for its own evaluation. Otherwise (or if
/// that fails, out of memory included) each evaluates alone.
fn evaluate_together(learner: &Learner, members: &mut [Member], metrics: &[StepMetrics]) {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (pos, (m, s)) in members.iter().zip(metrics).enumerate() {
        if s.loss.is_finite() && m.evaluates_at(s.step) {
            if let Some(key) = evaluation_pack_key(m.spec) {
                groups.entry(key).or_default().push(pos);
            }
        }
    }
    let step = learner.step();
    for positions in groups.into_values() {
        let eval = &members[positions[0]].spec.eval;
        let most = members_per_rollout(eval.episodes, eval.samples);
        for positions in positions.chunks(most).filter(|p| p.len() > 1) {
            let specs: Vec<&Spec> = positions.iter().map(|&p| members[p].spec).collect();
            let tasks: Vec<&dyn Task> = positions
                .iter()
                .map(|&p| members[p].task.as_ref())
                .collect();
            // libtorch errors (a GPU out of memory) surface as panics in tch.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let policies = learner
                    .packed_policies(positions)
                    .context("the members do not pack")??;
                let cancel = members[positions[0]].cancel;
                evaluate_pack(&specs, &tasks, &Cancellable::new(&policies, cancel), step)
            }));
            match attempt {
                Ok(Ok(results)) => {
                    info!(members = positions.len(), step, "evaluated together");
                    for (&pos, result) in positions.iter().zip(results) {
                        members[pos].prepared = Some((step, result));
                    }
                }
                // Stopped: each member's own evaluation says so at once.
                Ok(Err(e)) if is_cancelled(&e) => {}
                Ok(Err(e)) => tracing::warn!("these members evaluate one by one: {e:#}"),
                Err(_) => tracing::warn!(
                    "these members evaluate one by one: the batched rollout panicked"
                ),
            }
        }
    }
}

fn build(specs: &[&Spec], members: &[Member]) -> Result<Learner> {
    let spec = members[0].spec;
    let device = parse_device(&spec.resources.device)?.resolve()?;
    if spec.resources.threads > 0 {
        tch::set_num_threads(spec.resources.threads as i32);
    }
    let mut parts = Vec::with_capacity(members.len());
    for m in members {
        parts.push(
            trial_member(m.spec, m.task.as_ref(), device)
                .with_context(|| format!("trial {}", m.spec.trial_id()))?,
        );
    }
    let member_specs: Vec<&Spec> = members.iter().map(|m| specs[m.index]).collect();
    let learner = build_learner(&member_specs, parts, device)?;
    training_precision(spec, device).apply()?;
    Ok(learner)
}

/// Removes the members `done` says have ended, from the learner too.
fn retire(learner: &mut Learner, members: &mut Vec<Member>, done: impl Fn(&Member) -> bool) {
    for pos in (0..members.len()).rev() {
        if done(&members[pos]) {
            learner.remove(pos);
            members.remove(pos);
        }
    }
}

/// Continues from the members' latest checkpoints, if they ran before (a pack's members
/// are all at the same step). A checkpoint whose bytes differ from the sha256 recorded when
/// it was written is refused: resuming from altered weights would give a trial that is
/// not the one recorded.
fn resume_from_latest(
    learner: &mut Learner,
    members: &[Member],
    observers: &mut [&mut dyn TrialObserver],
) -> Result<Option<u64>> {
    let mut checkpoints = Vec::new();
    for m in members {
        let dir = m.paths.checkpoints();
        let Some(&step) = checkpoint::saved_steps(&dir)?.last() else {
            continue;
        };
        let files = checkpoint::CheckpointFiles::in_dir(&dir, step);
        let recorded = observers[m.index].recorded_checkpoint(step)?;
        let verified = checkpoint::verify(&files, recorded.as_deref())
            .context("resuming from the latest checkpoint")?;
        checkpoints.push(verified);
    }
    if checkpoints.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        checkpoints.len() == members.len(),
        "some trials of the pack have checkpoints and some do not: they cannot train together"
    );
    learner.restore(&checkpoints)?;
    info!(
        step = learner.step(),
        members = members.len(),
        "resumed from checkpoints"
    );
    Ok(Some(learner.step()))
}

/// One trial of a running pack: its spec and task, files, logs and progress.
struct Member<'a> {
    /// Position in the caller's lists (specs, observers, results).
    index: usize,
    spec: &'a Spec,
    task: Box<dyn Task>,
    paths: TrialPaths,
    options: &'a TrialOptions,
    logs: Option<(CsvLog, CsvLog)>,
    bar: ProgressBar,
    last_good: Option<u64>,
    /// Start of the current logging window: when, and at which step.
    window: (Instant, u64),
    /// When this run of the trial began training.
    started: Instant,
    /// Seconds of training that earlier runs logged up to the step this run starts from.
    trained_before: f64,
    /// Its evaluation of a step, made together with other members' ([`evaluate_together`]).
    prepared: Option<(u64, (EvalSummary, Vec<EpisodeRecord>))>,
    /// The run's stop request, which evaluations heed too.
    cancel: &'a AtomicBool,
}

impl<'a> Member<'a> {
    fn prepare(
        index: usize,
        spec: &'a Spec,
        paths: TrialPaths,
        options: &'a TrialOptions,
        cancel: &'a AtomicBool,
    ) -> Result<Self> {
        write_atomic(&paths.config(), spec.to_toml().as_bytes())?;
        let task = spec.task.build().context("[task]")?;
        checkpoint::write_task_file(&paths.checkpoints(), &spec.task)?;
        Ok(Self {
            index,
            spec,
            task,
            paths,
            options,
            logs: None,
            bar: ProgressBar::hidden(),
            last_good: None,
            window: (Instant::now(), 0),
            started: Instant::now(),
            trained_before: 0.0,
            prepared: None,
            cancel,
        })
    }

    /// Whether `step` is a multiple of `every` (0: never).
    fn every(every: u64, step: u64) -> bool {
        every > 0 && step % every == 0
    }

    /// Whether `step` ends the trial's training.
    fn is_last(&self, step: u64) -> bool {
        step >= self.spec.train.iterations
    }

    /// Whether the trial evaluates periodically after `step` (the end excluded): itself,
    /// or by a later evaluation job of the checkpoint it then saves.
    fn periodic_evaluation_at(&self, step: u64) -> bool {
        Self::every(self.spec.train.eval_every, step) && !self.is_last(step)
    }

    /// Whether the trial evaluates itself after `step` (periodically, or at the end).
    fn evaluates_at(&self, step: u64) -> bool {
        let periodic = self.periodic_evaluation_at(step) && !self.options.defer_evaluations;
        self.is_last(step) || periodic
    }

    /// Whether the trial saves a checkpoint after `step`.
    fn checkpoints_at(&self, step: u64) -> bool {
        let for_a_job = self.periodic_evaluation_at(step) && self.options.defer_evaluations;
        Self::every(self.spec.train.checkpoint_every, step) || self.is_last(step) || for_a_job
    }

    /// Whether the trial's weights after `step` are evaluated or saved: that iteration's
    /// metrics are read before the next one changes them.
    fn uses_weights_at(&self, step: u64) -> bool {
        self.evaluates_at(step) || self.checkpoints_at(step)
    }

    fn open_logs(&mut self, start_step: u64) -> Result<()> {
        let (metrics, earlier) =
            CsvLog::open::<MetricsRow>(&self.paths.metrics(), start_step, |r| r.step)?;
        // Earlier runs' training: their logged windows, and the steps after the last logged
        // row up to the checkpoint this run starts from, at that row's rate.
        let unlogged = earlier
            .last()
            .filter(|r| r.iterations_per_second > 0.0)
            .map_or(0.0, |r| {
                start_step.saturating_sub(r.step) as f64 / r.iterations_per_second
            });
        self.trained_before =
            logged_seconds(earlier.iter().map(|r| (r.step, r.iterations_per_second))) + unlogged;
        // Restored at its last step, the trial makes its final evaluation again: a row of it
        // written before it stopped goes.
        let keep_evaluations = match start_step >= self.spec.train.iterations {
            true => start_step - 1,
            false => start_step,
        };
        let (evaluations, _) =
            CsvLog::open::<EvalSummary>(&self.paths.evaluations(), keep_evaluations, |r| r.step)?;
        self.logs = Some((metrics, evaluations));
        self.bar = progress_bar(
            self.options.progress,
            self.spec.train.iterations,
            start_step,
        );
        self.last_good = (start_step > 0).then_some(start_step);
        self.window = (Instant::now(), start_step);
        self.started = Instant::now();
        Ok(())
    }

    fn metrics_log(&mut self) -> &mut CsvLog {
        &mut self.logs.as_mut().expect("logs are open").0
    }

    /// Logs the step just taken as the spec asks; true when the trial has run all its
    /// iterations. A non-finite loss ends it.
    fn log_step(&mut self, m: &StepMetrics, observer: &mut dyn TrialObserver) -> Result<bool> {
        let (spec, step) = (self.spec, m.step);
        if !m.loss.is_finite() {
            self.metrics_log().flush()?;
            self.bar.abandon();
            return Err(TrialStop::NonFiniteLoss {
                step,
                value: m.loss,
                last_good: self.last_good,
            }
            .into());
        }
        let last = self.is_last(step);
        if step % spec.train.log_every == 0 || last {
            let (t0, s0) = self.window;
            let rate = (step - s0) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            self.window = (Instant::now(), step);
            let row = metrics_row(m, self.started.elapsed().as_secs_f64(), rate);
            self.metrics_log().append(&row)?;
            observer.metrics(&row)?;
            self.bar
                .set_message(format!("loss {:.4}  {:.1} it/s", m.loss, rate));
        }
        Ok(last)
    }

    /// Evaluates and checkpoints as the spec asks at the logged step; passes `last` on.
    fn after_step(
        &mut self,
        learner: &Learner,
        pos: usize,
        m: &StepMetrics,
        last: bool,
        observer: &mut dyn TrialObserver,
    ) -> Result<bool> {
        let step = m.step;
        anyhow::ensure!(
            !self.uses_weights_at(step) || learner.step() == step,
            "internal error: the weights of step {step} were asked for at step {}",
            learner.step()
        );
        // Evaluate before checkpointing: a trial killed in between redoes the evaluation.
        if self.periodic_evaluation_at(step) && !self.options.defer_evaluations {
            let (summary, episodes) = self.evaluate(learner, pos, step)?;
            observer.evaluation(&summary, &episodes)?;
            self.bar.println(format!(
                "step {step}: success {:.1}% [{:.1}, {:.1}]",
                100.0 * summary.success_rate,
                100.0 * summary.ci_low,
                100.0 * summary.ci_high
            ));
            self.record_evaluation(&summary)?;
        }
        if self.checkpoints_at(step) {
            self.checkpoint(learner, pos, observer)?;
        }
        self.bar.set_position(step);
        Ok(last)
    }

    fn evaluate(
        &mut self,
        learner: &Learner,
        pos: usize,
        step: u64,
    ) -> Result<(EvalSummary, Vec<EpisodeRecord>)> {
        if let Some((_, result)) = self.prepared.take().filter(|(at, _)| *at == step) {
            return Ok(result);
        }
        // Stopped within an environment step when the run is cancelled; the trial then
        // continues from its last checkpoint, which redoes this evaluation.
        let evaluated = learner.with_policy(pos, |policy| {
            let actor = Cancellable::new(policy, self.cancel);
            evaluate_actor(self.spec, self.task.as_ref(), &actor, step)
        })?;
        evaluated.map_err(|e| match is_cancelled(&e) {
            true => TrialStop::Cancelled {
                step,
                checkpoint: self.last_good,
            }
            .into(),
            false => e,
        })
    }

    fn checkpoint(
        &mut self,
        learner: &Learner,
        pos: usize,
        observer: &mut dyn TrialObserver,
    ) -> Result<()> {
        self.metrics_log().flush()?;
        observer.before_checkpoint()?;
        let saved = learner.save_checkpoint(pos, &self.paths.checkpoints())?;
        observer.checkpoint(&saved)?;
        self.last_good = Some(saved.files.step);
        Ok(())
    }

    fn record_evaluation(&mut self, summary: &EvalSummary) -> Result<()> {
        let log = &mut self.logs.as_mut().expect("logs are open").1;
        log.append(summary)?;
        log.flush()
    }

    /// The final evaluation and the trial's report.
    fn finish(
        &mut self,
        learner: &Learner,
        pos: usize,
        observer: &mut dyn TrialObserver,
        resumed_from: Option<u64>,
        train_seconds: f64,
    ) -> Result<TrialReport> {
        self.bar.finish_and_clear();
        self.metrics_log().flush()?;
        let step = learner.step();
        // The whole trial's training: earlier runs' (from their logged rates) and this one's.
        let train_seconds = self.trained_before + train_seconds;
        let (summary, episodes) = self.evaluate(learner, pos, step)?;
        write_final_evaluation(self.spec, self.task.as_ref(), &self.paths, &episodes)?;
        observer.evaluation(&summary, &episodes)?;
        self.record_evaluation(&summary)?;
        let report = TrialReport {
            experiment: self.spec.name.clone(),
            trial_id: self.spec.trial_id(),
            dir: self.paths.dir.clone(),
            policy: self.spec.policy.kind.clone(),
            iterations: self.spec.train.iterations,
            resumed_from,
            train_seconds,
            iterations_per_second: match train_seconds > 0.0 {
                true => step as f64 / train_seconds,
                false => 0.0,
            },
            final_evaluation: summary,
        };
        write_atomic(
            &self.paths.summary(),
            (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
        )?;
        Ok(report)
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
