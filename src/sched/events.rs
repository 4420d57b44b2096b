//! What the dispatcher reports as a run goes: typed events for a [`Reporter`] to render
//! (progress bars and lines in the terminal live in `cli/`), and the outcomes of jobs and
//! of the run.

use super::jobs::Job;

/// Why a run stops early. Ordered: a later reason only ever replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// `--fail-fast` and a job failed for good.
    FailFast { job: String },
    /// Ctrl-C or SIGTERM: workers checkpoint and stop.
    Signal { name: String },
    /// A second signal: workers are killed.
    Kill { name: String },
}

impl StopReason {
    /// Whether the user asked for the stop (as opposed to a failure stopping the run).
    pub fn by_user(&self) -> bool {
        !matches!(self, StopReason::FailFast { .. })
    }
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded,
    /// Stopped by the run stopping; its trial is `killed` with a checkpoint.
    Cancelled,
    /// Failed and queued again (`--max-retries`): `attempt` of `retries`.
    Retrying {
        reason: String,
        attempt: u32,
        retries: u32,
    },
    Failed {
        reason: String,
    },
}

/// How a whole run ended, which decides the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every job succeeded.
    Completed,
    /// At least one job failed for good (its trial says why).
    Failed,
    /// Stopped by a signal.
    Cancelled,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// A trial recorded as running had lost its worker: it is now `killed` (resumable).
    MarkedKilled {
        trial: String,
        reason: String,
    },
    /// A trial runs in a live worker of another run and is left to it.
    LeftToOtherRun {
        trial: String,
    },
    /// Trials whose backend job (started by an earlier run) still runs: followed to its
    /// end rather than started again.
    Following {
        backend_job: String,
        trials: Vec<String>,
    },
    NothingToRun,
    Started {
        jobs: usize,
        slots: Vec<String>,
        backend: &'static str,
    },
    JobStarted {
        key: usize,
        job: Job,
        slot: String,
        worker: String,
        settings: String,
        /// Steps a training job runs to (for a progress bar).
        steps: Option<u64>,
    },
    /// A training job's latest recorded step and loss.
    Progress {
        key: usize,
        step: u64,
        loss: Option<f64>,
    },
    JobEnded {
        key: usize,
        job: Job,
        outcome: JobOutcome,
        settings: String,
        /// The trial's latest evaluated success rate, after a training job.
        success_rate: Option<f64>,
    },
    Stopping {
        reason: StopReason,
    },
}

/// Receives a run's events in order.
pub trait Reporter {
    fn report(&mut self, event: RunEvent);
}

/// A reporter that keeps every event (tests, and callers that render afterwards).
#[derive(Debug, Default)]
pub struct EventLog {
    pub events: Vec<RunEvent>,
}

impl Reporter for EventLog {
    fn report(&mut self, event: RunEvent) {
        self.events.push(event);
    }
}
