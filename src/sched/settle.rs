//! What a worker's end means for each trial of its job, and what the dispatcher records
//! for a worker that could not record it itself (killed, lost, crashed).

use anyhow::Result;

use super::backend::{StopLevel, WorkerEnd};
use super::jobs::{Job, JobKind};
use super::launch::log_tail;
use crate::exit::Exit;
use crate::store::{EndWhen, Store, TrialStatus};

/// How a finished worker's job went for one trial, before retries are considered.
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

/// Reads a worker's end, trial by trial (a pack's members may end differently); a
/// training worker that ended without recording how (a signal, a crash, a lost worker)
/// gets its trials recorded here at once.
pub async fn settle(
    store: &Store,
    done: &Finished<'_>,
    end: &WorkerEnd,
    level: StopLevel,
) -> Result<Vec<(String, Settled)>> {
    let stopping = level > StopLevel::Run;
    let train = done.job.kind == JobKind::Train;
    let mut settled = Vec::with_capacity(done.job.trials.len());
    for trial in &done.job.trials {
        let outcome = match end {
            WorkerEnd::Exited(code) => settle_exit(store, done, trial, *code).await?,
            WorkerEnd::Signaled(signal) => {
                gone(
                    store,
                    done,
                    trial,
                    format!("worker ended by signal {signal}"),
                )
                .await?
            }
            WorkerEnd::Lost(why) => {
                gone(
                    store,
                    done,
                    trial,
                    format!("lost track of its worker: {why}"),
                )
                .await?
            }
        };
        // While the run stops, a worker ended by it (or an evaluation) was cancelled.
        let outcome = match outcome {
            Ended::Gone(_) if stopping => Settled::Cancelled,
            Ended::Gone(reason) => Settled::Failed(reason),
            Ended::Settled(Settled::Failed(_)) if stopping && !train => Settled::Cancelled,
            Ended::Settled(settled) => settled,
        };
        settled.push((trial.clone(), outcome));
    }
    Ok(settled)
}

/// A worker's end for one trial, with the workers that ended without a word apart.
enum Ended {
    Settled(Settled),
    Gone(String),
}

/// A worker gone without a word: its trial stays resumable from its last checkpoint.
async fn gone(store: &Store, done: &Finished<'_>, trial: &str, why: String) -> Result<Ended> {
    if done.job.kind == JobKind::Train {
        let reason = format!("{why}; resumable from its latest checkpoint");
        store
            .end_trial(
                done.experiment,
                trial,
                TrialStatus::Killed,
                Some(&reason),
                EndWhen::Running,
            )
            .await?;
    }
    Ok(Ended::Gone(why))
}

/// A worker that exited: its exit status, and for training what it recorded per trial.
async fn settle_exit(store: &Store, done: &Finished<'_>, trial: &str, code: i32) -> Result<Ended> {
    let exit = Exit::from_code(code);
    if let JobKind::Evaluate { step } = done.job.kind {
        // A job of several trials records each evaluation as it is made: one that was
        // recorded succeeded, whatever happened to the others.
        let failed = !matches!(exit, Some(Exit::Success | Exit::Cancelled));
        if failed
            && !store
                .unevaluated_checkpoints(done.experiment, trial)
                .await?
                .contains(&step)
        {
            return Ok(Ended::Settled(Settled::Succeeded));
        }
    }
    if done.job.kind != JobKind::Train {
        return Ok(Ended::Settled(match exit {
            Some(Exit::Success) => Settled::Succeeded,
            Some(Exit::Cancelled) => Settled::Cancelled,
            _ => Settled::Failed(format!(
                "worker exited with status {code}: {}",
                log_tail(done.log, done.log_start)
            )),
        }));
    }
    let stored = store.stored_trial(done.experiment, trial).await?;
    Ok(Ended::Settled(match (stored.status, stored.error) {
        (TrialStatus::Completed, _) => Settled::Succeeded,
        (TrialStatus::Killed, _) if exit == Some(Exit::Cancelled) => Settled::Cancelled,
        (TrialStatus::Failed, Some(error)) => Settled::Failed(error),
        // Ended before recording its trial (it could not start, or crashed): the log says.
        _ => {
            let reason = format!(
                "worker exited with status {code}: {}",
                log_tail(done.log, done.log_start)
            );
            store
                .end_trial(
                    done.experiment,
                    trial,
                    TrialStatus::Failed,
                    Some(&reason),
                    EndWhen::Unfinished,
                )
                .await?;
            Settled::Failed(reason)
        }
    }))
}
