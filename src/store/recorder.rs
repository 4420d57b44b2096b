//! Records one trial into the results store as it runs: its status, batched metric rows,
//! checkpoints (with sha256), evaluations and their episodes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

use super::{MetricRow, Store, TrialStatus};
use crate::eval::{EpisodeRecord, EvalSummary};
use crate::spec::Spec;
use crate::train::CheckpointFiles;
use crate::trial::{MetricsRow, TrialObserver};

/// Metric rows buffered before a write (a write also happens at every checkpoint).
const FLUSH_ROWS: usize = 2000;

pub struct TrialRecorder {
    runtime: Runtime,
    store: Store,
    experiment: String,
    trial: String,
    pending: Vec<MetricRow>,
}

impl TrialRecorder {
    /// Opens the store at `db` and records the experiment and the trial (pending).
    pub fn new(
        db: &Path,
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
                )
                .await
        })?;
        Ok(Self {
            runtime,
            store,
            experiment,
            trial,
            pending: Vec::new(),
        })
    }

    /// The trial starts running in this process on `device`.
    pub fn started(&mut self, device: &str) -> Result<()> {
        self.runtime.block_on(
            self.store
                .start_trial(&self.experiment, &self.trial, device),
        )
    }

    /// The trial ended with `status` (and the reason, when it failed).
    pub fn finished(&mut self, status: TrialStatus, error: Option<&str>) -> Result<()> {
        self.flush()?;
        self.runtime.block_on(
            self.store
                .finish_trial(&self.experiment, &self.trial, status, error),
        )
    }

    fn flush(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.pending);
        self.runtime.block_on(self.store.insert_metrics(&rows))
    }
}

impl TrialObserver for TrialRecorder {
    fn metrics(&mut self, row: &MetricsRow) -> Result<()> {
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
        if self.pending.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, files: &CheckpointFiles) -> Result<()> {
        self.flush()?;
        let bytes = std::fs::read(&files.model)
            .with_context(|| format!("reading {}", files.model.display()))?;
        let sha = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let (experiment, trial) = (&self.experiment, &self.trial);
        self.runtime.block_on(async {
            self.store
                .add_checkpoint(
                    experiment,
                    trial,
                    files.step,
                    &files.model.display().to_string(),
                    &sha,
                    bytes.len() as u64,
                )
                .await?;
            self.store.heartbeat(experiment, trial, files.step).await
        })
    }

    fn evaluation(&mut self, summary: &EvalSummary, episodes: &[EpisodeRecord]) -> Result<()> {
        self.flush()?;
        self.runtime
            .block_on(
                self.store
                    .add_evaluation(&self.experiment, &self.trial, summary, episodes),
            )
            .map(|_| ())
    }
}
