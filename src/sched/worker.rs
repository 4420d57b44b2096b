//! What a worker process does: train one trial, or evaluate one checkpoint of it, with
//! everything recorded in the results store. The trial's config comes from the store, so
//! a worker needs only the experiment, the trial id and where runs and database live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

use crate::eval::EvalSummary;
use crate::policy::LoadedPolicy;
use crate::spec::{parse_device, Spec};
use crate::store::{block_on, Store, TrialRecorder, TrialStatus};
use crate::task::particle::ParticleTask;
use crate::train::checkpoint::{file_sha256, CheckpointFiles};
use crate::trial::{evaluate_actor, run_trial, TrialOptions, TrialPaths, TrialReport, TrialStop};

/// Runs one trial with its progress recorded in the results store at `db`: the trial is
/// `running` (with heartbeats) while it trains, then `completed`, `killed` (cancelled,
/// checkpoint saved) or `failed` with its reason.
pub fn run_recorded_trial(
    spec: &Spec,
    spec_path: &Path,
    overrides: &BTreeMap<String, toml::Value>,
    runs: &Path,
    db: &Path,
    options: &TrialOptions,
    cancel: &AtomicBool,
) -> Result<TrialReport> {
    let mut recorder = TrialRecorder::new(db, spec_path, spec, overrides)?;
    let device = parse_device(&spec.resources.device)?.resolve()?;
    recorder.started(&format!("{device:?}").to_lowercase())?;
    let result = run_trial(spec, runs, options, cancel, &mut recorder);
    match &result {
        Ok(_) => recorder.finished(TrialStatus::Completed, None)?,
        Err(e) if matches!(e.downcast_ref(), Some(TrialStop::Cancelled { .. })) => {
            recorder.finished(TrialStatus::Killed, Some(&format!("{e:#}")))?
        }
        Err(e) => recorder.finished(TrialStatus::Failed, Some(&format!("{e:#}")))?,
    }
    result
}

/// A worker's assignment.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub experiment: String,
    pub trial: String,
    pub runs: PathBuf,
    pub db: PathBuf,
    /// `cpu` or `cuda` (the one GPU `CUDA_VISIBLE_DEVICES` leaves visible).
    pub device: String,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: usize,
}

impl WorkerJob {
    /// The recorded spec of the trial, placed on this worker's device.
    fn spec(&self) -> Result<(Spec, crate::store::StoredTrial)> {
        let stored = block_on(async {
            let store = Store::open(&self.db).await?;
            store.stored_trial(&self.experiment, &self.trial).await
        })?;
        let mut spec: Spec = serde_json::from_str(&stored.config_json)
            .with_context(|| format!("trial {}: its recorded config", self.trial))?;
        spec.resources.device = self.device.clone();
        spec.resources.threads = self.threads;
        Ok((spec, stored))
    }

    /// Trains the trial (continuing from its latest checkpoint), deferring periodic
    /// evaluations to evaluation jobs.
    pub fn train(&self, cancel: &AtomicBool) -> Result<TrialReport> {
        let (spec, stored) = self.spec()?;
        let overrides: BTreeMap<String, toml::Value> =
            serde_json::from_str(&stored.overrides_json).unwrap_or_default();
        let options = TrialOptions {
            progress: false,
            defer_evaluations: true,
        };
        run_recorded_trial(
            &spec,
            Path::new(stored.spec_path.as_deref().unwrap_or_default()),
            &overrides,
            &self.runs,
            &self.db,
            &options,
            cancel,
        )
    }

    /// Evaluates the checkpoint at `step` with the trial's `[eval]` settings and records
    /// the evaluation and its episodes.
    pub fn evaluate(&self, step: u64) -> Result<EvalSummary> {
        let (spec, _) = self.spec()?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let files =
            CheckpointFiles::in_dir(&TrialPaths::new(&self.runs, &spec).checkpoints(), step);
        block_on(async {
            let store = Store::open(&self.db).await?;
            let recorded = store
                .checkpoint_sha256(&self.experiment, &self.trial, step)
                .await?;
            let actual = file_sha256(&files.model)?;
            match recorded {
                Some(sha) if sha != actual => bail!(
                    "{}: sha256 {actual} differs from the recorded {sha}",
                    files.model.display()
                ),
                _ => Ok(()),
            }
        })?;
        let device = parse_device(&self.device)?.resolve()?;
        let policy = LoadedPolicy::load(&files, device)?;
        let task = ParticleTask::new(spec.task.particle.clone()).context("[task]")?;
        let (summary, records) = evaluate_actor(&spec, &task, &policy.view(), step)?;
        block_on(async {
            let store = Store::open(&self.db).await?;
            store
                .add_evaluation(&self.experiment, &self.trial, &summary, &records)
                .await
        })?;
        Ok(summary)
    }
}
