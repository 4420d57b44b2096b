//! What a worker's end means for its job, and what the dispatcher records for a worker
//! that could not record it itself (killed, lost, crashed).

use anyhow::Result;

use super::backend::{StopLevel, WorkerEnd};
use super::jobs::{Job, JobKind};
use super::launch::log_tail;
use crate::exit::Exit;
use crate::store::{EndWhen, Store, TrialStatus};

/// How a finished worker's job went, before retries are considered.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Succeeded,
    Cancelled,
    Failed(String),
}

/// A worker's job, where it logged, and from which byte its output of this run starts.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub experiment: &'a str,
    pub job: &'a Job,
    pub log: &'a std::path::Path,
    pub log_start: u64,
}

/// Reads a worker's end; a training worker that ended without recording how (a signal, a
/// crash, a lost worker) gets its trial recorded here at once.
pub async fn settle(
    store: &Store,
    done: &Finished<'_>,
    end: &WorkerEnd,
    level: StopLevel,
) -> Result<Settled> {
    let stopping = level > StopLevel::Run;
    let train = done.job.kind == JobKind::Train;
    let (experiment, trial) = (done.experiment, done.job.trial.as_str());
    // A worker gone without a word: its trial stays resumable from its last checkpoint.
    let killed = |reason: String| async move {
        if train {
            let reason = format!("{reason}; resumable from its latest checkpoint");
            store
                .end_trial(
                    experiment,
                    trial,
                    TrialStatus::Killed,
                    Some(&reason),
                    EndWhen::Running,
                )
                .await?;
        }
        anyhow::Ok(if stopping {
            Settled::Cancelled
        } else {
            Settled::Failed(reason)
        })
    };
    match end {
        WorkerEnd::Exited(code) => match Exit::from_code(*code) {
            Some(Exit::Success) => Ok(Settled::Succeeded),
            Some(Exit::Cancelled) => Ok(Settled::Cancelled),
            _ => {
                let stored = store.stored_trial(experiment, trial).await?;
                // A trial that failed in its worker carries the reason; anything else (a
                // worker that could not start, an evaluation) is told by its log.
                let reason = match (train, stored.status, stored.error) {
                    (true, TrialStatus::Failed, Some(error)) => error,
                    _ => format!(
                        "worker exited with status {code}: {}",
                        log_tail(done.log, done.log_start)
                    ),
                };
                if train {
                    store
                        .end_trial(
                            experiment,
                            trial,
                            TrialStatus::Failed,
                            Some(&reason),
                            EndWhen::Unfinished,
                        )
                        .await?;
                }
                Ok(Settled::Failed(reason))
            }
        },
        WorkerEnd::Signaled(signal) => killed(format!("worker ended by signal {signal}")).await,
        WorkerEnd::Lost(why) => killed(format!("lost track of its worker: {why}")).await,
    }
}
