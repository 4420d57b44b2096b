//! What a running trial tells the outside world as it goes.

use anyhow::Result;

use super::MetricsRow;
use crate::checkpoint::SavedCheckpoint;
use crate::eval::{EpisodeRecord, EvalSummary};

/// Receives what a trial produces as it goes; [`super::TrialRecorder`] writes it to the
/// results store.
pub trait TrialObserver {
    /// A row of `metrics.csv` was written.
    fn metrics(&mut self, row: &MetricsRow) -> Result<()>;
    /// A checkpoint is about to be saved: everything held so far must be recorded first,
    /// because a run killed once the checkpoint's files exist resumes after its step and
    /// never makes those rows again.
    fn before_checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
    /// A checkpoint was saved.
    fn checkpoint(&mut self, saved: &SavedCheckpoint) -> Result<()>;
    /// An evaluation finished (periodic or final).
    fn evaluation(&mut self, summary: &EvalSummary, episodes: &[EpisodeRecord]) -> Result<()>;
    /// The sha256 recorded for the checkpoint at `step`, if one was recorded: a trial
    /// resumes only from a checkpoint that still has it.
    fn recorded_checkpoint(&mut self, _step: u64) -> Result<Option<String>> {
        Ok(None)
    }
}

/// An observer that keeps nothing (the trial's files are still written).
pub struct NoObserver;

impl TrialObserver for NoObserver {
    fn metrics(&mut self, _: &MetricsRow) -> Result<()> {
        Ok(())
    }
    fn checkpoint(&mut self, _: &SavedCheckpoint) -> Result<()> {
        Ok(())
    }
    fn evaluation(&mut self, _: &EvalSummary, _: &[EpisodeRecord]) -> Result<()> {
        Ok(())
    }
}
