//! The dispatcher: one loop owns the run's state (queue, free slots, running workers) and
//! reacts to worker ends, signals and a progress tick. Workers are separate processes;
//! they record their own trials, and the dispatcher records only what a dead worker could
//! not (a crash, a kill).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::backend::{Backend, Launch, StopLevel, WorkerEnd, WorkerExit};
use super::jobs::{evaluation_steps, liveness, Job, JobKind, Liveness};
use super::slots::{plan_slots, Machine, Slot, SlotDevice};
use crate::spec::{describe_settings, Spec};
use crate::store::{hostname, now, parse_timestamp, EndWhen, Store, TrialStatus};
use crate::trial::TrialPaths;

/// Exit status with which a worker reports a cancelled (checkpointed) trial.
pub const WORKER_CANCELLED: i32 = 130;

/// An experiment's place: its name, runs folder and results database.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub runs: PathBuf,
    pub db: PathBuf,
}

/// How `run` and `resume` schedule.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop launching at the first failure and stop the running workers.
    pub fail_fast: bool,
    /// Attempts after a failure, each continuing from the trial's latest checkpoint.
    pub max_retries: u32,
    /// A `running` trial without a heartbeat for this long is taken as dead.
    pub stale_after: Duration,
    /// CPU slots (overrides `resources.cpu_slots`).
    pub cpu_slots: Option<usize>,
    /// Progress bars on stderr.
    pub progress: bool,
    /// A line on stdout for each job started and ended.
    pub report_events: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub slots: Vec<String>,
    pub launched: usize,
    pub succeeded: usize,
    /// Jobs that failed for good, with the reason.
    pub failures: Vec<String>,
    /// Trials left to a live worker of another run.
    pub running_elsewhere: Vec<String>,
    pub cancelled: bool,
}

/// How a finished job went.
enum JobResult {
    Done,
    Cancelled,
    Failed(String),
}

struct Running {
    job: Job,
    slot: Slot,
    bar: ProgressBar,
    log: PathBuf,
    log_start: u64,
}

/// Runs the jobs of `trials` (recorded in the store) on this host's slots until all are
/// done, one fails under `--fail-fast`, or a signal stops the run.
pub fn run_experiment(
    experiment: &Experiment,
    trials: &[String],
    options: &RunOptions,
    backend: &dyn Backend,
) -> Result<RunSummary> {
    // A current-thread runtime: workers are spawned from this (main) thread, whose exit
    // is what their parent-death signal watches.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the scheduler's runtime")?
        .block_on(Dispatcher::new(experiment, options, backend).run(trials))
}

struct Dispatcher<'a> {
    experiment: &'a Experiment,
    options: &'a RunOptions,
    backend: &'a dyn Backend,
    specs: HashMap<String, Spec>,
    settings: HashMap<String, String>,
    bars: MultiProgress,
}

impl<'a> Dispatcher<'a> {
    fn new(experiment: &'a Experiment, options: &'a RunOptions, backend: &'a dyn Backend) -> Self {
        let bars = MultiProgress::new();
        if !options.progress {
            bars.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            experiment,
            options,
            backend,
            specs: HashMap::new(),
            settings: HashMap::new(),
            bars,
        }
    }

    /// A line for the user, above the progress bars when they are shown.
    fn say(&self, line: String) {
        if !self.options.report_events {
            return;
        }
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    async fn run(mut self, trials: &[String]) -> Result<RunSummary> {
        let store = Store::open(&self.experiment.db).await?;
        let mut summary = RunSummary::default();
        let mut queue = self.plan(&store, trials, &mut summary).await?;
        if queue.is_empty() {
            self.say(format!("{}: nothing to run", self.experiment.name));
            return Ok(summary);
        }
        let first = &self.specs[&queue[0].trial];
        let slots = plan_slots(
            &Machine::discover(),
            &first.resources,
            self.options.cpu_slots,
            queue.len(),
        )?;
        summary.slots = slots.iter().map(Slot::label).collect();
        self.say(format!(
            "{}: {} jobs on {} slots ({}), backend {}",
            self.experiment.name,
            queue.len(),
            slots.len(),
            summary.slots.join(" "),
            self.backend.name()
        ));

        let mut free: VecDeque<Slot> = slots.into();
        let mut running: HashMap<usize, Running> = HashMap::new();
        let (exit_tx, mut exits) = mpsc::unbounded_channel::<WorkerExit>();
        let (stop_tx, stop_rx) = watch::channel(StopLevel::Run);
        let mut interrupts = signal(SignalKind::interrupt())?;
        let mut terminations = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_key = 0usize;

        loop {
            let level = *stop_tx.borrow();
            while level == StopLevel::Run && !free.is_empty() && !queue.is_empty() {
                let (slot, job) = (free.pop_front().unwrap(), queue.pop_front().unwrap());
                match self.launch(next_key, &job, &slot, stop_rx.clone(), exit_tx.clone()) {
                    Ok(entry) => {
                        running.insert(next_key, entry);
                        summary.launched += 1;
                        next_key += 1;
                    }
                    Err(e) => {
                        let reason = format!("{}: could not start a worker: {e:#}", job.describe());
                        self.say(reason.clone());
                        summary.failures.push(reason);
                        free.push_back(slot);
                    }
                }
            }
            if running.is_empty() && (queue.is_empty() || level > StopLevel::Run) {
                break;
            }
            tokio::select! {
                Some(exit) = exits.recv() => {
                    let Some(done) = running.remove(&exit.key) else { continue };
                    done.bar.finish_and_clear();
                    self.bars.remove(&done.bar);
                    free.push_back(done.slot.clone());
                    let level = *stop_tx.borrow();
                    match self.settle(&store, &done, &exit.end, level).await? {
                        JobResult::Done => {
                            summary.succeeded += 1;
                            self.finished(&store, &done.job, &mut queue).await?;
                        }
                        JobResult::Cancelled => summary.cancelled = true,
                        JobResult::Failed(reason) => {
                            let mut job = done.job.clone();
                            if level == StopLevel::Run && job.failures < self.options.max_retries {
                                job.failures += 1;
                                self.say(format!(
                                    "{} failed ({reason}); retry {} of {}",
                                    job.describe(), job.failures, self.options.max_retries
                                ));
                                queue.push_front(job);
                            } else {
                                self.say(format!("{} failed: {reason}", job.describe()));
                                summary.failures.push(format!("{}: {reason}", job.describe()));
                                if self.options.fail_fast {
                                    self.say("--fail-fast: stopping the other workers".into());
                                    stop_tx.send_if_modified(|l| escalate(l, StopLevel::Graceful));
                                }
                            }
                        }
                    }
                }
                _ = interrupts.recv() => self.on_signal(&stop_tx, &mut summary),
                _ = terminations.recv() => self.on_signal(&stop_tx, &mut summary),
                _ = tick.tick() => self.show_progress(&store, &running).await,
            }
        }
        Ok(summary)
    }

    fn on_signal(&self, stop: &watch::Sender<StopLevel>, summary: &mut RunSummary) {
        summary.cancelled = true;
        let next = if *stop.borrow() == StopLevel::Run {
            self.say(
                "stopping: workers save a checkpoint and stop (signal again to kill them)".into(),
            );
            StopLevel::Graceful
        } else {
            self.say("killing the workers".into());
            StopLevel::Kill
        };
        stop.send_if_modified(|l| escalate(l, next));
    }

    /// Reads the trials' configs, ends trials whose worker died, and queues the jobs:
    /// training for every unfinished trial, evaluations for finished trials' checkpoints.
    async fn plan(
        &mut self,
        store: &Store,
        trials: &[String],
        summary: &mut RunSummary,
    ) -> Result<VecDeque<Job>> {
        let (host, now) = (hostname(), parse_timestamp(&now()).unwrap_or_default());
        for t in store.running_trials(&self.experiment.name).await? {
            match liveness(&t, &host, now, self.options.stale_after) {
                Liveness::Stale(reason) => {
                    let reason = format!("{reason}; resumable from its latest checkpoint");
                    store
                        .end_trial(
                            &self.experiment.name,
                            &t.id,
                            TrialStatus::Killed,
                            Some(&reason),
                            EndWhen::Running,
                        )
                        .await?;
                    self.say(format!("trial {}: marked killed: {reason}", t.id));
                }
                Liveness::Alive => summary.running_elsewhere.push(t.id.clone()),
            }
        }
        let recorded = store.experiment_trials(&self.experiment.name).await?;
        let mut queue = VecDeque::new();
        for id in trials {
            let stored = recorded
                .iter()
                .find(|t| &t.id == id)
                .with_context(|| format!("trial {id} is not recorded"))?;
            let spec: Spec = serde_json::from_str(&stored.config_json)
                .with_context(|| format!("trial {id}: its recorded config"))?;
            self.specs.insert(id.clone(), spec);
            self.settings.insert(
                id.clone(),
                describe_settings(
                    &serde_json::from_str(&stored.overrides_json).unwrap_or_default(),
                ),
            );
            if summary.running_elsewhere.contains(id) {
                self.say(format!(
                    "trial {id}: running in another process; left to it"
                ));
            } else if stored.status == TrialStatus::Completed.as_str() {
                queue.extend(self.evaluation_jobs(store, id).await?);
            } else {
                queue.push_back(Job::train(id));
            }
        }
        Ok(queue)
    }

    async fn evaluation_jobs(&self, store: &Store, trial: &str) -> Result<Vec<Job>> {
        let steps = store
            .unevaluated_checkpoints(&self.experiment.name, trial)
            .await?;
        Ok(evaluation_steps(&self.specs[trial], &steps)
            .into_iter()
            .map(|step| Job::evaluate(trial, step))
            .collect())
    }

    fn launch(
        &self,
        key: usize,
        job: &Job,
        slot: &Slot,
        stop: watch::Receiver<StopLevel>,
        exits: mpsc::UnboundedSender<WorkerExit>,
    ) -> Result<Running> {
        let spec = &self.specs[&job.trial];
        let dir = TrialPaths::new(&self.experiment.runs, spec).dir;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(match job.kind {
            JobKind::Train => "worker.log".to_owned(),
            JobKind::Evaluate { step } => format!("evaluate_step_{step:07}.log"),
        });
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let (device, visible) = match &slot.device {
            SlotDevice::Cpu => ("cpu", String::new()),
            SlotDevice::Cuda { visible } => ("cuda", visible.clone()),
        };
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--experiment".into(),
            self.experiment.name.clone(),
            "--trial".into(),
            job.trial.clone(),
            "--runs".into(),
            path_arg(&self.experiment.runs),
            "--db".into(),
            path_arg(&self.experiment.db),
            "--device".into(),
            device.into(),
            "--threads".into(),
            slot.threads.to_string(),
        ];
        if let JobKind::Evaluate { step } = job.kind {
            args.extend(["--evaluate".into(), step.to_string()]);
        }
        let threads = slot.threads.to_string();
        let launch = Launch {
            program: std::env::current_exe().context("locating the ebmlab binary")?,
            args,
            env: vec![
                // A worker never picks its own GPU: it sees exactly its slot's (or none).
                ("CUDA_VISIBLE_DEVICES".into(), visible),
                ("RAYON_NUM_THREADS".into(), threads.clone()),
                ("OMP_NUM_THREADS".into(), threads),
            ],
            log: log.clone(),
        };
        let pid = self.backend.launch(key, launch, stop, exits)?;
        let bar = match job.kind {
            JobKind::Train => {
                let bar = ProgressBar::new(spec.train.iterations);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar
            }
            JobKind::Evaluate { .. } => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {spinner} {msg}")
                        .expect("valid template"),
                );
                bar
            }
        };
        bar.set_prefix(format!("{} {}", slot.label(), job.trial));
        bar.set_message(match job.kind {
            JobKind::Train => self.settings[&job.trial].clone(),
            JobKind::Evaluate { step } => format!("evaluating step {step}"),
        });
        let bar = self.bars.add(bar);
        self.say(format!(
            "start  {}  on {} (pid {pid})  {}",
            job.describe(),
            slot.label(),
            self.settings[&job.trial]
        ));
        Ok(Running {
            job: job.clone(),
            slot: slot.clone(),
            bar,
            log,
            log_start,
        })
    }

    /// What a worker's end means for its job; records what the worker could not.
    async fn settle(
        &self,
        store: &Store,
        done: &Running,
        end: &WorkerEnd,
        level: StopLevel,
    ) -> Result<JobResult> {
        let (experiment, trial) = (&self.experiment.name, &done.job.trial);
        let stopping = level > StopLevel::Run;
        let result = match end {
            WorkerEnd::Exited(0) => JobResult::Done,
            WorkerEnd::Exited(WORKER_CANCELLED) => JobResult::Cancelled,
            WorkerEnd::Signaled(signal) => {
                let reason = format!("worker ended by signal {signal}");
                if done.job.kind == JobKind::Train {
                    store
                        .end_trial(
                            experiment,
                            trial,
                            TrialStatus::Killed,
                            Some(&reason),
                            EndWhen::Running,
                        )
                        .await?;
                }
                if stopping {
                    JobResult::Cancelled
                } else {
                    JobResult::Failed(reason)
                }
            }
            WorkerEnd::Exited(code) => {
                let stored = store.stored_trial(experiment, trial).await?;
                // A trial that failed in its worker carries the reason; anything else
                // (a worker that could not start, an evaluation) is told by its log.
                let reason = match (done.job.kind, stored.status.as_str(), stored.error) {
                    (JobKind::Train, "failed", Some(error)) => error,
                    _ => format!(
                        "worker exited with status {code}: {}",
                        log_tail(&done.log, done.log_start)
                    ),
                };
                if done.job.kind == JobKind::Train {
                    store
                        .end_trial(
                            experiment,
                            trial,
                            TrialStatus::Failed,
                            Some(&reason),
                            EndWhen::Unfinished,
                        )
                        .await?;
                }
                JobResult::Failed(reason)
            }
            WorkerEnd::Lost(why) => JobResult::Failed(format!("lost the worker: {why}")),
        };
        Ok(result)
    }

    /// After a job succeeded: report it; a trained trial's checkpoints get evaluation jobs.
    async fn finished(&self, store: &Store, job: &Job, queue: &mut VecDeque<Job>) -> Result<()> {
        let row = store
            .trial_status(Some(&self.experiment.name))
            .await?
            .into_iter()
            .find(|r| r.id == job.trial);
        match job.kind {
            JobKind::Train => {
                let success = row
                    .and_then(|r| r.success_rate)
                    .map_or("-".into(), |s| format!("{:.1}%", 100.0 * s));
                self.say(format!(
                    "done   {}  success {success}  {}",
                    job.describe(),
                    self.settings[&job.trial]
                ));
                queue.extend(self.evaluation_jobs(store, &job.trial).await?);
            }
            JobKind::Evaluate { .. } => self.say(format!("done   {}", job.describe())),
        }
        Ok(())
    }

    async fn show_progress(&self, store: &Store, running: &HashMap<usize, Running>) {
        if self.bars.is_hidden() || running.is_empty() {
            return;
        }
        let Ok(rows) = store.trial_status(Some(&self.experiment.name)).await else {
            return;
        };
        for r in running.values() {
            match r.job.kind {
                JobKind::Train => {
                    if let Some(row) = rows.iter().find(|row| row.id == r.job.trial) {
                        r.bar.set_position(row.step.max(0) as u64);
                        if let Some(loss) = row.loss {
                            r.bar.set_message(format!("loss {loss:.4}"));
                        }
                    }
                }
                JobKind::Evaluate { .. } => r.bar.tick(),
            }
        }
    }
}

/// Raises the stop level, never lowers it; true when it changed.
fn escalate(level: &mut StopLevel, to: StopLevel) -> bool {
    if to > *level {
        *level = to;
        true
    } else {
        false
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// The last lines a worker wrote to its log since `start`, for a failure's reason.
fn log_tail(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        format!("no output (log {})", log.display())
    } else {
        format!("{tail} (log {})", log.display())
    }
}
