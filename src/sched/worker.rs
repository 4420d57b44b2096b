//! What a worker process does: train one trial or a pack of trials, or evaluate one
//! checkpoint, with everything recorded in the results store. The trials' configs come
//! from the store, so a worker needs only the experiment, the trial ids and where runs and
//! database live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use crate::checkpoint::{verify, CheckpointFiles};
use crate::eval::EvalSummary;
use crate::policy::LoadedPolicy;
use crate::spec::{parse_device, Spec};
use crate::store::{block_on, Database, Store, StoredTrial};
use crate::trial::{
    evaluate_actor, evaluation_rows, run_recorded_pack, RecordedTrial, TrialOptions, TrialPaths,
    TrialReport,
};

/// A worker's assignment.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub experiment: String,
    /// One trial, or the members of a pack (training only).
    pub trials: Vec<String>,
    pub runs: PathBuf,
    pub db: Database,
    /// `cpu` or `cuda` (the one GPU `CUDA_VISIBLE_DEVICES` leaves visible).
    pub device: String,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: usize,
    /// Evaluate at `train.eval_every` within the training job (no evaluation jobs follow).
    pub inline_evaluations: bool,
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
    /// The recorded specs of the trials, placed on this worker's device.
    fn specs(&self) -> Result<Vec<(Spec, StoredTrial)>> {
        let stored = block_on(async {
            let store = Store::open(&self.db).await?;
            let mut stored = Vec::new();
            for trial in &self.trials {
                stored.push(store.stored_trial(&self.experiment, trial).await?);
            }
            anyhow::Ok(stored)
        })?;
        stored
            .into_iter()
            .map(|stored| {
                let mut spec: Spec = serde_json::from_str(&stored.config_json)
                    .with_context(|| format!("trial {}: its recorded config", stored.id))?;
                spec.resources.device = self.device.clone();
                spec.resources.threads = self.threads;
                Ok((spec, stored))
            })
            .collect()
    }

    /// Trains the trials (continuing from their latest checkpoints), together when there
    /// are several, deferring periodic evaluations to evaluation jobs.
    pub fn train(&self, cancel: &AtomicBool) -> Result<Vec<Result<TrialReport>>> {
        let specs = self.specs()?;
        let overrides = specs
            .iter()
            .map(|(_, stored)| parse_overrides(stored))
            .collect::<Result<Vec<_>>>()?;
        let trials: Vec<RecordedTrial> = specs
            .iter()
            .zip(&overrides)
            .map(|((spec, stored), overrides)| RecordedTrial {
                spec,
                spec_path: Path::new(stored.spec_path.as_deref().unwrap_or_default()),
                overrides,
            })
            .collect();
        let options = TrialOptions {
            progress: false,
            defer_evaluations: !self.inline_evaluations,
        };
        run_recorded_pack(&trials, &self.runs, &self.db, &options, cancel)
    }

    /// Evaluates the checkpoint at `step` of the (one) trial with its `[eval]` settings and
    /// records the evaluation and its episodes.
    pub fn evaluate(&self, step: u64) -> Result<EvalSummary> {
        anyhow::ensure!(self.trials.len() == 1, "an evaluation job is of one trial");
        let (spec, _) = self.specs()?.remove(0);
        let trial = &self.trials[0];
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let files =
            CheckpointFiles::in_dir(&TrialPaths::new(&self.runs, &spec).checkpoints(), step);
        let recorded = block_on(async {
            let store = Store::open(&self.db).await?;
            store.checkpoint_sha256(&self.experiment, trial, step).await
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
                .add_evaluation(&self.experiment, trial, &evaluation, &rows)
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
            backend_job: None,
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
