//! Records one trial into the results store as it runs: its status, batched metric rows,
//! checkpoints (with sha256), evaluations and their episodes, and a heartbeat from a
//! thread of its own while the trial runs (so a process that dies without a word is seen).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::runtime::Runtime;
use tracing::warn;

use super::{
    run_pack, training_precision, MetricsRow, TrialObserver, TrialOptions, TrialReport, TrialStop,
};
use crate::checkpoint::SavedCheckpoint;
use crate::eval::{EpisodeRecord, EvalSummary};
use crate::spec::{parse_device, Spec};
use crate::store::{
    block_on, Database, EndWhen, KnownTrial, MetricRow, NewEpisode, NewEvaluation, Store,
    TrialStatus,
};

/// A trial to run and record: its spec, the file it came from and the settings that set
/// it apart in its experiment.
#[derive(Debug, Clone, Copy)]
pub struct RecordedTrial<'a> {
    pub spec: &'a Spec,
    pub spec_path: &'a Path,
    pub overrides: &'a BTreeMap<String, toml::Value>,
}

/// Runs one trial with its progress recorded in the results store at `db`: the trial is
/// `running` (with heartbeats) while it trains, then `completed`, `killed` (cancelled,
/// checkpoint saved) or `failed` with its reason.
pub fn run_recorded_trial(
    trial: RecordedTrial,
    runs: &Path,
    db: &Database,
    options: &TrialOptions,
    cancel: &AtomicBool,
) -> Result<TrialReport> {
    run_recorded_pack(&[trial], runs, db, options, cancel)?
        .pop()
        .expect("one result per trial")
}

/// [`run_recorded_trial`] for trials that train together as a pack (see [`run_pack`]):
/// each is recorded on its own, with the pack it trains in.
pub fn run_recorded_pack(
    trials: &[RecordedTrial],
    runs: &Path,
    db: &Database,
    options: &TrialOptions,
    cancel: &AtomicBool,
) -> Result<Vec<Result<TrialReport>>> {
    let mut recorders = trials
        .iter()
        .map(|t| TrialRecorder::new(db, t.spec_path, t.spec, t.overrides))
        .collect::<Result<Vec<_>>>()?;
    let lead = trials[0].spec;
    let device = parse_device(&lead.resources.device)?.resolve()?;
    let precision = training_precision(lead, device);
    let label = format!("{} {precision}", format!("{device:?}").to_lowercase());
    let pack = (trials.len() > 1).then(|| format!("{}+{}", lead.trial_id(), trials.len() - 1));
    for recorder in &mut recorders {
        recorder.started(&label, pack.as_deref())?;
    }
    let specs: Vec<&Spec> = trials.iter().map(|t| t.spec).collect();
    let mut observers: Vec<&mut dyn TrialObserver> = recorders
        .iter_mut()
        .map(|r| r as &mut dyn TrialObserver)
        .collect();
    let results = run_pack(&specs, runs, options, cancel, &mut observers);
    for (recorder, result) in recorders.iter_mut().zip(&results) {
        match result {
            Ok(_) => recorder.finished(TrialStatus::Completed, None)?,
            Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
                recorder.finished(TrialStatus::Killed, Some(&format!("{e:#}")))?
            }
            Err(e) => recorder.finished(TrialStatus::Failed, Some(&format!("{e:#}")))?,
        }
    }
    Ok(results)
}

/// An evaluation and its episodes as the store's rows.
pub fn evaluation_rows(
    summary: &EvalSummary,
    episodes: &[EpisodeRecord],
) -> (NewEvaluation, Vec<NewEpisode>) {
    let evaluation = NewEvaluation {
        step: summary.step,
        counts: (summary.episodes, summary.successes),
        rate: (summary.success_rate, summary.ci_low, summary.ci_high),
        mean_min_distances: [
            summary.mean_min_distance_first_goal,
            summary.mean_min_distance_second_goal,
        ],
        wall_seconds: summary.wall_seconds,
    };
    let rows = episodes
        .iter()
        .map(|e| {
            let o = &e.outcome;
            NewEpisode {
                seed: o.seed,
                success: o.success,
                steps: o.steps,
                min_distance_first_goal: o.min_goal_distances[0] as f64,
                min_distance_second_goal: o.min_goal_distances[1] as f64,
                final_distance_first_goal: o.final_goal_distances[0] as f64,
                final_distance_second_goal: o.final_goal_distances[1] as f64,
            }
        })
        .collect();
    (evaluation, rows)
}

/// Metric rows buffered before a write (a write also happens at every checkpoint, and
/// after `FLUSH_SECONDS` so that listings of running trials stay current).
const FLUSH_ROWS: usize = 2000;
const FLUSH_SECONDS: u64 = 10;
/// Seconds between heartbeats unless `EBMLAB_HEARTBEAT_SECONDS` says otherwise.
const HEARTBEAT_SECONDS: f64 = 5.0;

/// How often running trials write their heartbeat.
pub fn heartbeat_interval() -> Duration {
    let seconds = std::env::var("EBMLAB_HEARTBEAT_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(HEARTBEAT_SECONDS);
    Duration::from_secs_f64(seconds)
}

pub struct TrialRecorder {
    runtime: Runtime,
    store: Store,
    db: Database,
    experiment: String,
    trial: String,
    pending: Vec<MetricRow>,
    last_flush: std::time::Instant,
    /// The latest step seen, shared with the heartbeat thread.
    step: Arc<AtomicU64>,
    heartbeat: Option<Heartbeat>,
}

/// The thread that writes a trial's heartbeat and step until told to stop.
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Heartbeat {
    fn start(db: Database, experiment: String, trial: String, step: Arc<AtomicU64>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = heartbeat_interval();
        let thread = std::thread::spawn(move || {
            let beat = async {
                let store = Store::open(&db).await?;
                // Wake every interval until the sender says stop (or is dropped).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let step = step.load(Ordering::Relaxed);
                    if let Err(e) = store.heartbeat(&experiment, &trial, step).await {
                        warn!("heartbeat of trial {trial}: {e:#}");
                    }
                }
                anyhow::Ok(())
            };
            if let Err(e) = block_on(beat) {
                warn!("heartbeat thread: {e:#}");
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl TrialRecorder {
    /// Opens the store at `db` and records the experiment and the trial (pending).
    pub fn new(
        db: &Database,
        spec_path: &Path,
        spec: &Spec,
        overrides: &BTreeMap<String, toml::Value>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the store's runtime")?;
        let store = runtime.block_on(Store::open(db))?;
        let (experiment, trial) = (spec.name.clone(), spec.trial_id());
        runtime.block_on(async {
            store
                .upsert_experiment(&experiment, &spec_path.display().to_string())
                .await?;
            store
                .add_trial(
                    &experiment,
                    &trial,
                    &serde_json::to_string(overrides)?,
                    &serde_json::to_string(spec)?,
                    spec.train.iterations,
                    KnownTrial::Kept,
                )
                .await
        })?;
        Ok(Self {
            runtime,
            store,
            db: db.clone(),
            experiment,
            trial,
            pending: Vec::new(),
            last_flush: std::time::Instant::now(),
            step: Arc::new(AtomicU64::new(0)),
            heartbeat: None,
        })
    }

    /// The trial starts running in this process on `device`, in `pack` (`None`: alone);
    /// heartbeats begin.
    pub fn started(&mut self, device: &str, pack: Option<&str>) -> Result<()> {
        self.runtime.block_on(self.store.start_trial(
            &self.experiment,
            &self.trial,
            device,
            pack,
        ))?;
        self.heartbeat = Some(Heartbeat::start(
            self.db.clone(),
            self.experiment.clone(),
            self.trial.clone(),
            Arc::clone(&self.step),
        ));
        Ok(())
    }

    /// The trial ended with `status` (and the reason, when it failed).
    pub fn finished(&mut self, status: TrialStatus, error: Option<&str>) -> Result<()> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop();
        }
        self.flush()?;
        self.runtime.block_on(self.store.end_trial(
            &self.experiment,
            &self.trial,
            status,
            error,
            EndWhen::Always,
        ))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.last_flush = std::time::Instant::now();
        let rows = std::mem::take(&mut self.pending);
        self.runtime.block_on(self.store.insert_metrics(&rows))
    }
}

impl TrialObserver for TrialRecorder {
    fn metrics(&mut self, row: &MetricsRow) -> Result<()> {
        self.step.store(row.step, Ordering::Relaxed);
        let step = row.step as i64;
        let values = [
            ("lr", row.lr),
            ("loss", row.loss),
            ("info_nce", row.info_nce),
            ("grad_penalty", row.grad_penalty),
            ("energy_positive", row.energy_positive),
            ("energy_negative", row.energy_negative),
            ("grad_norm", row.grad_norm),
            ("iterations_per_second", row.iterations_per_second),
        ];
        for (name, value) in values {
            self.pending.push(MetricRow {
                experiment: self.experiment.clone(),
                trial: self.trial.clone(),
                step,
                name: name.to_owned(),
                value,
                wall_time: row.wall_seconds,
            });
        }
        if self.pending.len() >= FLUSH_ROWS
            || self.last_flush.elapsed() >= Duration::from_secs(FLUSH_SECONDS)
        {
            self.flush()?;
        }
        Ok(())
    }

    fn before_checkpoint(&mut self) -> Result<()> {
        self.flush()
    }

    fn checkpoint(&mut self, saved: &SavedCheckpoint) -> Result<()> {
        self.flush()?;
        let files = &saved.files;
        self.step.store(files.step, Ordering::Relaxed);
        let (sha, bytes) = (&saved.model_sha256, saved.model_bytes);
        let (experiment, trial) = (&self.experiment, &self.trial);
        self.runtime.block_on(async {
            self.store
                .add_checkpoint(
                    experiment,
                    trial,
                    files.step,
                    &files.model.display().to_string(),
                    sha,
                    bytes,
                )
                .await?;
            self.store.heartbeat(experiment, trial, files.step).await
        })
    }

    fn evaluation(&mut self, summary: &EvalSummary, episodes: &[EpisodeRecord]) -> Result<()> {
        self.flush()?;
        let (evaluation, rows) = evaluation_rows(summary, episodes);
        self.runtime
            .block_on(
                self.store
                    .add_evaluation(&self.experiment, &self.trial, &evaluation, &rows),
            )
            .map(|_| ())
    }

    fn recorded_checkpoint(&mut self, step: u64) -> Result<Option<String>> {
        self.runtime.block_on(
            self.store
                .checkpoint_sha256(&self.experiment, &self.trial, step),
        )
    }
}

impl Drop for TrialRecorder {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop();
        }
    }
}
