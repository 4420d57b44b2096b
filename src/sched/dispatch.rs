//! The dispatcher: one loop owns the run's state (queue, free slots, running workers) and
//! reacts to worker ends, stop requests (signals) and a progress tick. Workers are
//! separate processes; they record their own trials, and the dispatcher records only what a
//! dead worker could not. What happens is told to a [`Reporter`] as typed events.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use super::backend::{Backend, StopLevel, WorkerExit, WorkerLink};
use super::events::{JobOutcome, Reporter, RunEvent, RunOutcome, StopReason};
use super::jobs::{evaluation_steps, liveness, Job, JobKind, Liveness};
use super::launch::worker_launch;
use super::mps;
use super::packs::{form_packs, pack_size, Candidate};
use super::settle::{settle, Finished, Settled};
use super::slots::{plan_slots, Machine, Slot, SlotDevice};
use crate::checkpoint::saved_steps;
use crate::policy::members_per_rollout;
use crate::spec::{describe_settings, Spec};
use crate::store::{hostname, now, parse_timestamp, Database, EndWhen, Store, TrialStatus};
use crate::trial::{evaluation_pack_key, pack_key, TrialPaths};

/// An experiment's place: its name, runs folder and results database.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub runs: PathBuf,
    pub db: Database,
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
    /// Start the jobs and return without following them (a cluster backend runs them on;
    /// `status` and `resume` pick them up from the database).
    pub detach: bool,
}

/// A request from outside to stop the run (a signal, by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest(pub String);

/// A job that failed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub job: Job,
    pub settings: String,
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub slots: Vec<String>,
    pub launched: usize,
    pub succeeded: usize,
    pub failures: Vec<JobFailure>,
    /// Trials left to a live worker of another run.
    pub running_elsewhere: Vec<String>,
    /// Why the run stopped early, if it did.
    pub stop: Option<StopReason>,
    /// Jobs started and left running (`--detach`).
    pub detached: usize,
}

impl RunSummary {
    pub fn outcome(&self) -> RunOutcome {
        match &self.stop {
            Some(reason) if reason.by_user() => RunOutcome::Cancelled,
            _ if !self.failures.is_empty() => RunOutcome::Failed,
            _ => RunOutcome::Completed,
        }
    }
}

/// Runs the jobs of `trials` (recorded in the store) on this host's slots until all are
/// done, one fails under `--fail-fast`, or SIGINT/SIGTERM stops the run.
pub fn run_experiment(
    experiment: &Experiment,
    trials: &[String],
    options: &RunOptions,
    backend: &dyn Backend,
    reporter: &mut dyn Reporter,
) -> Result<RunSummary> {
    // A current-thread runtime: workers are spawned from this (main) thread, whose exit
    // is what their parent-death signal watches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the scheduler's runtime")?;
    runtime.block_on(async {
        let stops = forward_signals()?;
        let machine = Machine::discover();
        dispatch(
            experiment, trials, options, &machine, backend, reporter, stops,
        )
        .await
    })
}

/// SIGINT and SIGTERM as stop requests.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<StopRequest>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::unbounded_channel();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
    ] {
        let mut stream = signal(kind).with_context(|| format!("listening for {name}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(StopRequest(name.into())).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// The dispatcher's loop, with the machine, the backend, the reporter and the source of
/// stop requests given (tests give fakes).
pub async fn dispatch(
    experiment: &Experiment,
    trials: &[String],
    options: &RunOptions,
    machine: &Machine,
    backend: &dyn Backend,
    reporter: &mut dyn Reporter,
    mut stops: mpsc::UnboundedReceiver<StopRequest>,
) -> Result<RunSummary> {
    let store = Store::open(&experiment.db).await?;
    let (exits_tx, mut exits) = mpsc::unbounded_channel::<WorkerExit>();
    let (stop, stop_rx) = watch::channel(StopLevel::Run);
    let mut run = Dispatcher {
        experiment,
        options,
        backend,
        reporter,
        store,
        specs: HashMap::new(),
        settings: HashMap::new(),
        queue: VecDeque::new(),
        free: VecDeque::new(),
        running: HashMap::new(),
        summary: RunSummary::default(),
        stop,
        stop_rx,
        exits_tx,
        next_key: 0,
        pack_size: 1,
        worker_env: Vec::new(),
    };
    let to_train = run.plan(trials).await?;
    let lead = to_train
        .first()
        .cloned()
        .or_else(|| run.queue.front().map(|job| job.lead().to_owned()));
    let Some(first) = lead.map(|id| run.specs[&id].clone()) else {
        run.reporter.report(RunEvent::NothingToRun);
        return Ok(run.summary);
    };
    // Packs are sized for the device the slots are on; then the slots for the jobs.
    let probe = plan_slots(machine, &first.resources, options.cpu_slots, 1)?;
    let on_gpu = backend
        .slots(probe, 1)
        .iter()
        .any(|s| s.device != SlotDevice::Cpu);
    // Without `nvidia-smi` a GPU is taken to have 16 GiB.
    let gpu_memory = on_gpu.then(|| machine.gpu_memory.unwrap_or(16 << 30));
    run.pack_size = pack_size(first.resources.pack, &first, gpu_memory);
    let packs = form_packs(&run.candidates(&to_train), run.pack_size);
    let evaluations = std::mem::take(&mut run.queue);
    run.queue = packs.into_iter().map(Job::train_pack).collect();
    let evaluations = run.pack_evaluations(evaluations.into());
    run.queue.extend(evaluations);
    let here = plan_slots(
        machine,
        &first.resources,
        options.cpu_slots,
        run.queue.len(),
    )?;
    let slots = backend.slots(here, run.queue.len());
    // Kept for the run: dropped (asked to quit) when the run ends.
    let mps = if backend.runs_here() {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let dir = std::env::temp_dir().join(format!("ebmlab-mps-{}-{started}", std::process::id()));
        mps::for_slots(
            first.resources.mps,
            &slots,
            OsStr::new(mps::CONTROL_PROGRAM),
            &dir,
        )?
    } else {
        None
    };
    run.worker_env = mps.iter().flat_map(|d| d.worker_env().to_vec()).collect();
    run.summary.slots = slots.iter().map(Slot::label).collect();
    run.reporter.report(RunEvent::Started {
        jobs: run.queue.len(),
        slots: run.summary.slots.clone(),
        backend: backend.name(),
    });
    run.free = slots.into();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        run.launch_ready().await?;
        if options.detach && run.queue.is_empty() {
            run.summary.detached = run.running.len();
            break;
        }
        let level = *run.stop.borrow();
        if run.running.is_empty() && (run.queue.is_empty() || level > StopLevel::Run) {
            break;
        }
        tokio::select! {
            Some(exit) = exits.recv() => run.on_exit(exit).await?,
            Some(request) = stops.recv() => run.on_stop_request(request),
            _ = tick.tick() => run.progress().await,
        }
    }
    Ok(run.summary)
}

/// A job on a worker.
struct Running {
    job: Job,
    slot: Slot,
    log: PathBuf,
    log_start: u64,
}

struct Dispatcher<'a> {
    experiment: &'a Experiment,
    options: &'a RunOptions,
    backend: &'a dyn Backend,
    reporter: &'a mut dyn Reporter,
    store: Store,
    specs: HashMap<String, Spec>,
    settings: HashMap<String, String>,
    queue: VecDeque<Job>,
    free: VecDeque<Slot>,
    running: HashMap<usize, Running>,
    summary: RunSummary,
    stop: watch::Sender<StopLevel>,
    stop_rx: watch::Receiver<StopLevel>,
    exits_tx: mpsc::UnboundedSender<WorkerExit>,
    next_key: usize,
    /// Most trials in one job (training or evaluation), sized for the slots' device.
    pack_size: usize,
    /// Environment every worker gets besides its slot's (the run's MPS daemon's).
    worker_env: Vec<(String, String)>,
}

impl Dispatcher<'_> {
    /// Reads the trials' configs, ends trials whose worker died, queues evaluations for
    /// finished trials' checkpoints, and returns the trials to train.
    async fn plan(&mut self, trials: &[String]) -> Result<Vec<String>> {
        let name = &self.experiment.name;
        let recorded = self.store.experiment_trials(name).await?;
        // Jobs of the backend that still run trials (started by an earlier run): followed,
        // never started twice.
        let mut alive: HashMap<String, Vec<String>> = HashMap::new();
        for t in recorded
            .iter()
            .filter(|t| t.status != TrialStatus::Completed)
        {
            if let Some(job) = &t.backend_job {
                if self.backend.alive(job)? {
                    alive.entry(job.clone()).or_default().push(t.id.clone());
                }
            }
        }
        let followed = |id: &str| alive.values().any(|trials| trials.iter().any(|t| t == id));
        let (host, now) = (hostname(), parse_timestamp(&now()).unwrap_or_default());
        for t in self.store.running_trials(name).await? {
            if followed(&t.id) {
                continue;
            }
            match liveness(&t, &host, now, self.options.stale_after) {
                Liveness::Stale(reason) => {
                    let reason = format!("{reason}; resumable from its latest checkpoint");
                    self.store
                        .end_trial(
                            name,
                            &t.id,
                            TrialStatus::Killed,
                            Some(&reason),
                            EndWhen::Running,
                        )
                        .await?;
                    self.reporter.report(RunEvent::MarkedKilled {
                        trial: t.id.clone(),
                        reason,
                    });
                }
                Liveness::Alive => self.summary.running_elsewhere.push(t.id.clone()),
            }
        }
        let mut to_train = Vec::new();
        for id in trials {
            let stored = recorded
                .iter()
                .find(|t| &t.id == id)
                .with_context(|| format!("trial {id} is not recorded"))?;
            let spec: Spec = serde_json::from_str(&stored.config_json)
                .with_context(|| format!("trial {id}: its recorded config"))?;
            let overrides = super::worker::parse_overrides(stored)?;
            self.specs.insert(id.clone(), spec);
            self.settings.insert(
                id.clone(),
                describe_settings(&serde_json::to_value(&overrides)?),
            );
            if followed(id) {
                continue;
            } else if self.summary.running_elsewhere.contains(id) {
                self.reporter
                    .report(RunEvent::LeftToOtherRun { trial: id.clone() });
            } else if stored.status == TrialStatus::Completed {
                let jobs = self.evaluation_jobs(id).await?;
                self.queue.extend(jobs);
            } else {
                to_train.push(id.clone());
            }
        }
        let mut attach: Vec<(String, Vec<String>)> = alive
            .into_iter()
            .map(|(job, members)| {
                let members = members.into_iter().filter(|t| trials.contains(t)).collect();
                (job, members)
            })
            .filter(|(_, members): &(String, Vec<String>)| !members.is_empty())
            .collect();
        attach.sort();
        for (job, members) in attach {
            self.reporter.report(RunEvent::Following {
                backend_job: job.clone(),
                trials: members.clone(),
            });
            self.queue.push_front(Job {
                attach: Some(job),
                ..Job::train_pack(members)
            });
        }
        Ok(to_train)
    }

    /// What packing needs to know of each trial to train: its shape, and the step of its
    /// latest checkpoint (a pack's members continue from the same step).
    fn candidates(&self, trials: &[String]) -> Vec<Candidate> {
        trials
            .iter()
            .map(|id| {
                let spec = &self.specs[id];
                let dir = TrialPaths::new(&self.experiment.runs, spec).checkpoints();
                Candidate {
                    trial: id.clone(),
                    key: pack_key(spec),
                    step: saved_steps(&dir)
                        .ok()
                        .and_then(|s| s.last().copied())
                        .unwrap_or(0),
                }
            })
            .collect()
    }

    /// Evaluation jobs of one step whose trials can act together ([`evaluation_pack_key`])
    /// joined into jobs of up to `pack_size` trials; the others stay as they are.
    fn pack_evaluations(&self, jobs: Vec<Job>) -> Vec<Job> {
        let mut by_step: std::collections::BTreeMap<u64, Vec<Candidate>> = Default::default();
        let mut others = Vec::new();
        for job in jobs {
            match (job.kind, &job.trials[..]) {
                (JobKind::Evaluate { step }, [trial]) if job.attach.is_none() => {
                    by_step.entry(step).or_default().push(Candidate {
                        trial: trial.clone(),
                        key: evaluation_pack_key(&self.specs[trial]),
                        step,
                    })
                }
                _ => others.push(job),
            }
        }
        let packed = by_step.into_iter().flat_map(|(step, candidates)| {
            // Within the pack size, and what one batched rollout holds.
            let eval = &self.specs[&candidates[0].trial].eval;
            let size = self
                .pack_size
                .min(members_per_rollout(eval.episodes, eval.samples));
            form_packs(&candidates, size)
                .into_iter()
                .map(move |trials| Job::evaluate_pack(trials, step))
        });
        others.into_iter().chain(packed).collect()
    }

    async fn evaluation_jobs(&self, trial: &str) -> Result<Vec<Job>> {
        let steps = self
            .store
            .unevaluated_checkpoints(&self.experiment.name, trial)
            .await?;
        Ok(evaluation_steps(&self.specs[trial], &steps)
            .into_iter()
            .map(|step| Job::evaluate(trial, step))
            .collect())
    }

    /// Starts queued jobs on free slots while the run is not stopping.
    async fn launch_ready(&mut self) -> Result<()> {
        while *self.stop.borrow() == StopLevel::Run && !self.free.is_empty() {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            let slot = self.free.pop_front().expect("a free slot");
            let key = self.next_key;
            self.next_key += 1;
            match self.start(key, &job, &slot).await {
                Ok(()) => self.summary.launched += 1,
                Err(e) => {
                    self.free.push_back(slot);
                    let reason = format!("could not start a worker: {e:#}");
                    for trial in &job.trials {
                        if job.kind == JobKind::Train {
                            self.store
                                .end_trial(
                                    &self.experiment.name,
                                    trial,
                                    TrialStatus::Failed,
                                    Some(&reason),
                                    EndWhen::Unfinished,
                                )
                                .await?;
                        }
                        self.failed_for_good(key, job.for_trial(trial), reason.clone());
                    }
                }
            }
        }
        Ok(())
    }

    async fn start(&mut self, key: usize, job: &Job, slot: &Slot) -> Result<()> {
        let spec = &self.specs[job.lead()];
        let paths = TrialPaths::new(&self.experiment.runs, spec);
        // Detached, nobody is there to start evaluation jobs: trials evaluate as they go.
        let mut launch = worker_launch(self.experiment, job, slot, &paths, self.options.detach)?;
        launch.env.extend(self.worker_env.iter().cloned());
        let log = launch.log.clone();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let link = WorkerLink {
            key,
            stop: self.stop_rx.clone(),
            exits: self.exits_tx.clone(),
        };
        let launched = self.backend.launch(launch, link)?;
        // A trial's job is its training job (the one `resume` may follow).
        if let (Some(backend_job), JobKind::Train) = (&launched.backend_job, job.kind) {
            self.store
                .record_backend_job(&self.experiment.name, &job.trials, backend_job)
                .await?;
        }
        let worker = launched.worker;
        self.reporter.report(RunEvent::JobStarted {
            key,
            job: job.clone(),
            slot: slot.label(),
            worker,
            settings: self.job_settings(job),
            steps: (job.kind == JobKind::Train).then_some(spec.train.iterations),
        });
        self.running.insert(
            key,
            Running {
                job: job.clone(),
                slot: slot.clone(),
                log,
                log_start,
            },
        );
        Ok(())
    }

    async fn on_exit(&mut self, exit: WorkerExit) -> Result<()> {
        let Some(done) = self.running.remove(&exit.key) else {
            return Ok(());
        };
        self.free.push_back(done.slot.clone());
        let level = *self.stop.borrow();
        let finished = Finished {
            experiment: &self.experiment.name,
            job: &done.job,
            log: &done.log,
            log_start: done.log_start,
        };
        let mut evaluations = Vec::new();
        for (trial, settled) in settle(&self.store, &finished, &exit.end, level).await? {
            let job = done.job.for_trial(&trial);
            match settled {
                Settled::Succeeded => {
                    self.summary.succeeded += 1;
                    let success_rate = self.latest_success(&job).await?;
                    self.ended(exit.key, job.clone(), JobOutcome::Succeeded, success_rate);
                    if job.kind == JobKind::Train {
                        evaluations.extend(self.evaluation_jobs(&trial).await?);
                    }
                }
                Settled::Cancelled => self.ended(exit.key, job, JobOutcome::Cancelled, None),
                Settled::Failed(reason) => {
                    let mut job = job;
                    if level == StopLevel::Run && job.failures < self.options.max_retries {
                        job.failures += 1;
                        let outcome = JobOutcome::Retrying {
                            reason,
                            attempt: job.failures,
                            retries: self.options.max_retries,
                        };
                        self.ended(exit.key, job.clone(), outcome, None);
                        self.queue.push_front(job);
                    } else {
                        self.failed_for_good(exit.key, job, reason);
                    }
                }
            }
        }
        // A pack's members checkpoint at the same steps: their evaluations go together.
        let evaluations = self.pack_evaluations(evaluations);
        self.queue.extend(evaluations);
        Ok(())
    }

    /// The settings of a job's trials, for lines and bars.
    fn job_settings(&self, job: &Job) -> String {
        match &job.trials[..] {
            [trial] => self.settings[trial].clone(),
            trials => format!("pack of {}", trials.len()),
        }
    }

    fn failed_for_good(&mut self, key: usize, job: Job, reason: String) {
        let outcome = JobOutcome::Failed {
            reason: reason.clone(),
        };
        self.ended(key, job.clone(), outcome, None);
        self.summary.failures.push(JobFailure {
            settings: self.job_settings(&job),
            job: job.clone(),
            reason,
        });
        if self.options.fail_fast {
            self.stop_with(
                StopLevel::Graceful,
                StopReason::FailFast {
                    job: job.describe(),
                },
            );
        }
    }

    fn ended(&mut self, key: usize, job: Job, outcome: JobOutcome, success_rate: Option<f64>) {
        let settings = self.job_settings(&job);
        self.reporter.report(RunEvent::JobEnded {
            key,
            job,
            outcome,
            settings,
            success_rate,
        });
    }

    /// A signal: the first asks workers to checkpoint and stop, the next kills them.
    fn on_stop_request(&mut self, StopRequest(name): StopRequest) {
        if *self.stop.borrow() == StopLevel::Run {
            self.stop_with(StopLevel::Graceful, StopReason::Signal { name });
        } else {
            self.stop_with(StopLevel::Kill, StopReason::Kill { name });
        }
    }

    /// Raises the stop level (never lowers it) and records why.
    fn stop_with(&mut self, level: StopLevel, reason: StopReason) {
        if self.summary.stop.as_ref().is_some_and(|r| *r >= reason) {
            return;
        }
        self.summary.stop = Some(reason.clone());
        self.stop.send_if_modified(|l| {
            let raise = level > *l;
            if raise {
                *l = level;
            }
            raise
        });
        self.reporter.report(RunEvent::Stopping { reason });
    }

    async fn latest_success(&self, job: &Job) -> Result<Option<f64>> {
        if job.kind != JobKind::Train {
            return Ok(None);
        }
        let rows = self.store.trial_status(Some(&self.experiment.name)).await?;
        Ok(rows
            .into_iter()
            .find(|r| r.id == job.lead())
            .and_then(|r| r.success_rate))
    }

    /// The latest recorded step and loss of every running training job.
    async fn progress(&mut self) {
        if !self.running.values().any(|r| r.job.kind == JobKind::Train) {
            return;
        }
        let Ok(rows) = self.store.trial_status(Some(&self.experiment.name)).await else {
            return;
        };
        for (key, r) in &self.running {
            if r.job.kind != JobKind::Train {
                continue;
            }
            if let Some(row) = rows.iter().find(|row| row.id == r.job.lead()) {
                self.reporter.report(RunEvent::Progress {
                    key: *key,
                    step: row.step.max(0) as u64,
                    loss: row.loss,
                });
            }
        }
    }
}
