//! What a worker process does: train one trial or a pack of trials, or evaluate one
//! checkpoint, with everything recorded in the results store. The trials' configs come
//! from the store, so a worker needs only the experiment, the trial ids and where runs and
//! database live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use crate::checkpoint::{verify, CheckpointFiles, VerifiedCheckpoint};
use crate::eval::{is_cancelled, Cancellable, EpisodeRecord, EvalSummary};
use crate::policy::{LoadedPolicy, PackedPolicies};
use crate::spec::{parse_device, Spec};
use crate::store::{block_on, Database, Store, StoredTrial};
use crate::task::Task;
use crate::trial::{
    evaluate_actor, evaluate_pack, evaluation_rows, run_recorded_pack, RecordedTrial, TrialOptions,
    TrialPaths, TrialReport,
};

/// A worker's assignment.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub experiment: String,
    /// One trial, or the members of a pack (trained, or evaluated, together).
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

    /// Evaluates the checkpoints at `step` of the trials with their `[eval]` settings (as
    /// one batched rollout when there are several that can; one by one if that fails) and
    /// records each evaluation and its episodes. A trial that cannot be evaluated does not
    /// keep the others from theirs: each gets its own result. Once `cancel` is set the
    /// rollouts stop within an environment step, and the trials not yet recorded get a
    /// `Cancelled` error (their checkpoints stay unevaluated, for `resume`).
    pub fn evaluate(&self, step: u64, cancel: &AtomicBool) -> Result<Vec<Result<EvalSummary>>> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let device = parse_device(&self.device)?.resolve()?;
        let specs = self.specs()?;
        let loaded: Vec<Result<Loaded>> = specs
            .into_iter()
            .zip(&self.trials)
            .map(|((spec, _), trial)| self.load_for_evaluation(spec, trial, step))
            .collect();
        // The trials that loaded, evaluated together; each result kept at its trial's place.
        let ready: Vec<usize> = (0..loaded.len()).filter(|&i| loaded[i].is_ok()).collect();
        let mut together: Vec<Option<(EvalSummary, Vec<EpisodeRecord>)>> =
            loaded.iter().map(|_| None).collect();
        if ready.len() > 1 {
            let members: Vec<&Loaded> = ready
                .iter()
                .map(|&i| loaded[i].as_ref().expect("filtered"))
                .collect();
            match evaluate_loaded_together(&members, device, step, cancel) {
                Ok(results) => {
                    for (&i, result) in ready.iter().zip(results) {
                        together[i] = Some(result);
                    }
                }
                Err(e) if is_cancelled(&e) => {}
                Err(e) => tracing::warn!("evaluating one by one: {e:#}"),
            }
        }
        let mut summaries = Vec::with_capacity(loaded.len());
        for ((trial, loaded), prepared) in self.trials.iter().zip(loaded).zip(together) {
            let result = loaded.and_then(|(spec, task, checkpoint)| {
                let (summary, records) = match prepared {
                    Some(done) => done,
                    None => {
                        let policy = LoadedPolicy::load(&checkpoint, device)?;
                        let actor = policy.view();
                        evaluate_actor(
                            &spec,
                            task.as_ref(),
                            &Cancellable::new(&actor, cancel),
                            step,
                        )?
                    }
                };
                let (evaluation, rows) = evaluation_rows(&summary, &records);
                block_on(async {
                    let store = Store::open(&self.db).await?;
                    store
                        .add_evaluation(&self.experiment, trial, &evaluation, &rows)
                        .await
                })?;
                Ok(summary)
            });
            summaries.push(result.with_context(|| format!("trial {trial} step {step}")));
        }
        Ok(summaries)
    }

    /// A trial's spec, task and checked checkpoint at `step`.
    fn load_for_evaluation(&self, spec: Spec, trial: &str, step: u64) -> Result<Loaded> {
        let files =
            CheckpointFiles::in_dir(&TrialPaths::new(&self.runs, &spec).checkpoints(), step);
        let recorded = block_on(async {
            let store = Store::open(&self.db).await?;
            store.checkpoint_sha256(&self.experiment, trial, step).await
        })?;
        let checkpoint = verify(&files, recorded.as_deref())?;
        let task = spec.task.build().context("[task]")?;
        Ok((spec, task, checkpoint))
    }
}

/// What evaluating a trial's checkpoint needs.
type Loaded = (Spec, Box<dyn Task>, VerifiedCheckpoint);

/// One batched rollout of the members (an error, a panic of libtorch included, leaves
/// them to evaluate one by one), stopped once `cancel` is set.
fn evaluate_loaded_together(
    members: &[&Loaded],
    device: tch::Device,
    step: u64,
    cancel: &AtomicBool,
) -> Result<Vec<(EvalSummary, Vec<EpisodeRecord>)>> {
    let specs: Vec<&Spec> = members.iter().map(|(s, _, _)| s).collect();
    let tasks: Vec<&dyn Task> = members.iter().map(|(_, t, _)| t.as_ref()).collect();
    let checkpoints: Vec<&VerifiedCheckpoint> = members.iter().map(|(_, _, c)| c).collect();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let policies = PackedPolicies::load(&checkpoints, device)?;
        evaluate_pack(&specs, &tasks, &Cancellable::new(&policies, cancel), step)
    }))
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the batched rollout panicked")))
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
