//! Where a trial's files live: `runs/<experiment>/<trial-id>/`.

use std::path::{Path, PathBuf};

use crate::spec::Spec;

/// Files of a trial under `runs/<experiment>/<trial-id>/`.
#[derive(Debug, Clone)]
pub struct TrialPaths {
    pub dir: PathBuf,
}

impl TrialPaths {
    pub fn new(runs_root: &Path, spec: &Spec) -> Self {
        Self {
            dir: runs_root.join(&spec.name).join(spec.trial_id()),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn evaluations(&self) -> PathBuf {
        self.dir.join("evaluations.csv")
    }
    pub fn episodes(&self) -> PathBuf {
        self.dir.join("episodes.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    pub fn plots(&self) -> PathBuf {
        self.dir.join("plots")
    }
}
