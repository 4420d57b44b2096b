//! What a worker process does: train one trial, or evaluate one checkpoint of it, with
//! everything recorded in the results store. The trial's config comes from the store, so
//! a worker needs only the experiment, the trial id and where runs and database live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use crate::checkpoint::{verify, CheckpointFiles};
use crate::eval::EvalSummary;
use crate::policy::LoadedPolicy;
use crate::spec::{parse_device, Spec};
use crate::store::{block_on, Store, StoredTrial};
use crate::trial::{
    evaluate_actor, evaluation_rows, run_recorded_trial, TrialOptions, TrialPaths, TrialReport,
};

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

/// A recorded trial's overrides (a JSON object of dotted keys to values).
pub fn parse_overrides(trial: &StoredTrial) -> Result<BTreeMap<String, toml::Value>> {
    serde_json::from_str(&trial.overrides_json).with_context(|| {
        format!(
            "trial {}: its recorded overrides are not a JSON object of settings: {}",
            trial.id, trial.overrides_json
        )
    })
}

impl WorkerJob {
    /// The recorded spec of the trial, placed on this worker's device.
    fn spec(&self) -> Result<(Spec, StoredTrial)> {
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
        let overrides = parse_overrides(&stored)?;
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
        let recorded = block_on(async {
            let store = Store::open(&self.db).await?;
            store
                .checkpoint_sha256(&self.experiment, &self.trial, step)
                .await
        })?;
        let checkpoint = verify(&files, recorded.as_deref())?;
        let device = parse_device(&self.device)?.resolve()?;
        let policy = LoadedPolicy::load(&checkpoint, device)?;
        let task = spec.task.build().context("[task]")?;
        let (summary, records) = evaluate_actor(&spec, task.as_ref(), &policy.view(), step)?;
        let (evaluation, rows) = evaluation_rows(&summary, &records);
        block_on(async {
            let store = Store::open(&self.db).await?;
            store
                .add_evaluation(&self.experiment, &self.trial, &evaluation, &rows)
                .await
        })?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TrialStatus;

    #[test]
    fn overrides_that_are_not_a_json_object_are_an_error_naming_the_trial() {
        let mut trial = StoredTrial {
            id: "abc123".into(),
            status: TrialStatus::Pending,
            error: None,
            overrides_json: r#"{"train.seed": 3}"#.into(),
            config_json: "{}".into(),
            spec_path: None,
        };
        assert_eq!(
            parse_overrides(&trial).unwrap()["train.seed"].as_integer(),
            Some(3)
        );
        trial.overrides_json = "{\"train.seed\": 3".into();
        let err = format!("{:#}", parse_overrides(&trial).unwrap_err());
        assert!(
            err.contains("trial abc123") && err.contains("overrides"),
            "{err}"
        );
    }
}
