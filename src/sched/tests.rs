//! The dispatcher against a fake backend: no worker processes, no libtorch; each fake
//! worker follows a script and records its trial in the store as a real worker would.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::mpsc;

use super::*;
use crate::spec::Spec;
use crate::store::{Database, EndWhen, KnownTrial, Store, TrialStatus};

/// What a fake worker does with its job.
#[derive(Debug, Clone)]
enum Script {
    /// Records its trial completed and exits 0.
    Succeed,
    /// Records its trial failed with this reason and exits 1.
    Fail(&'static str),
    /// Trains until told to stop: a graceful stop records `killed` and exits 130, a kill
    /// ends it by SIGKILL.
    RunUntilStopped,
    /// A worker busy with a long checkpoint: only a kill ends it.
    IgnoreGraceful,
    /// The backend loses track of it.
    Lost,
    /// The backend cannot start it.
    CannotStart,
    /// A pack whose member at this position fails while the others complete (exit 1).
    PackMemberFails(usize),
}

struct FakeBackend {
    db: Database,
    experiment: String,
    /// Scripts per (lead) trial, one per launch; `Succeed` once they run out.
    scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    /// The trials of every job launched, in order.
    launched: Mutex<Vec<Vec<String>>>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn launch(&self, launch: Launch, link: WorkerLink) -> Result<Launched> {
        let (key, mut stop) = (link.key, link.stop.clone());
        let trials = launch.job.trials.clone();
        self.launched.lock().unwrap().push(trials.clone());
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&trials[0])
            .and_then(VecDeque::pop_front)
            .unwrap_or(Script::Succeed);
        if let Script::CannotStart = script {
            bail!("no such program (fake)");
        }
        let (db, experiment) = (self.db.clone(), self.experiment.clone());
        tokio::spawn(async move {
            let store = Store::open(&db).await.unwrap();
            let train = launch.job.kind == JobKind::Train;
            if train {
                for trial in &trials {
                    store
                        .start_trial(&experiment, trial, "cpu", None)
                        .await
                        .unwrap();
                }
            }
            // Records the end of the pack's members (all, or the one at `only`).
            let end_as = |status, error: Option<&'static str>, only: Option<usize>| {
                let (store, experiment, trials) =
                    (store.clone(), experiment.clone(), trials.clone());
                async move {
                    for (i, trial) in trials.iter().enumerate() {
                        if train && only.is_none_or(|o| o == i) {
                            store
                                .end_trial(&experiment, trial, status, error, EndWhen::Always)
                                .await
                                .unwrap();
                        }
                    }
                }
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            let end = match script {
                Script::Succeed => {
                    end_as(TrialStatus::Completed, None, None).await;
                    WorkerEnd::Exited(0)
                }
                Script::Fail(reason) => {
                    end_as(TrialStatus::Failed, Some(reason), None).await;
                    WorkerEnd::Exited(1)
                }
                Script::PackMemberFails(k) => {
                    end_as(TrialStatus::Completed, None, None).await;
                    end_as(TrialStatus::Failed, Some("loss became NaN"), Some(k)).await;
                    WorkerEnd::Exited(1)
                }
                Script::RunUntilStopped | Script::IgnoreGraceful => loop {
                    if stop.changed().await.is_err() {
                        break WorkerEnd::Lost("scheduler gone".into());
                    }
                    let level = *stop.borrow_and_update();
                    match level {
                        StopLevel::Kill => break WorkerEnd::Signaled(9),
                        StopLevel::Graceful if matches!(script, Script::RunUntilStopped) => {
                            end_as(TrialStatus::Killed, Some("cancelled at step 3"), None).await;
                            break WorkerEnd::Exited(130);
                        }
                        _ => {}
                    }
                },
                Script::Lost => WorkerEnd::Lost("waiting for the worker failed".into()),
                Script::CannotStart => unreachable!(),
            };
            link.ended(end);
        });
        Ok(Launched {
            worker: format!("fake {key}"),
            backend_job: None,
        })
    }
}

/// Stop requests sent when events arrive: the n-th job start, or a cancelled job.
struct Signaller {
    log: EventLog,
    stops: mpsc::UnboundedSender<StopRequest>,
    signal_after_starts: Option<usize>,
    signal_after_cancelled: bool,
}

impl Reporter for Signaller {
    fn report(&mut self, event: RunEvent) {
        let starts = |log: &EventLog| {
            log.events
                .iter()
                .filter(|e| matches!(e, RunEvent::JobStarted { .. }))
                .count()
        };
        let cancelled = matches!(
            &event,
            RunEvent::JobEnded {
                outcome: JobOutcome::Cancelled,
                ..
            }
        );
        self.log.report(event);
        if self.signal_after_starts == Some(starts(&self.log)) {
            self.signal_after_starts = None;
            let _ = self.stops.send(StopRequest("SIGTERM".into()));
        }
        if cancelled && self.signal_after_cancelled {
            self.signal_after_cancelled = false;
            let _ = self.stops.send(StopRequest("SIGINT".into()));
        }
    }
}

/// Records `n` trials of the fake experiment (they differ in their seed), packed `pack`
/// at a time, as `ebmlab run` records them; their ids.
fn record_trials(db: &Database, n: usize, pack: usize) -> Vec<String> {
    crate::store::block_on(async {
        let store = Store::open(db).await.unwrap();
        store.upsert_experiment("fake", "fake.toml").await.unwrap();
        let mut ids = Vec::new();
        for seed in 0..n as u64 {
            let mut spec = Spec {
                name: "fake".into(),
                ..Spec::default()
            };
            spec.train.seed = seed;
            spec.resources.pack = crate::spec::PackSize::Count(pack);
            let id = spec.trial_id();
            let overrides = format!("{{\"train.seed\":{seed}}}");
            let config = serde_json::to_string(&spec).unwrap();
            store
                .add_trial(
                    "fake",
                    &id,
                    &overrides,
                    &config,
                    100,
                    KnownTrial::TakesConfig,
                )
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    experiment: Experiment,
    trials: Vec<String>,
}

impl Fixture {
    /// An experiment of `n` recorded trials (they differ in their seed).
    fn new(n: usize) -> Self {
        Self::packed(n, 1)
    }

    /// [`Fixture::new`] with `resources.pack = pack`.
    fn packed(n: usize, pack: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let experiment = Experiment {
            name: "fake".into(),
            runs: dir.path().join("runs"),
            db: Database::Sqlite(dir.path().join("runs/ebmlab.sqlite")),
        };
        let trials = record_trials(&experiment.db, n, pack);
        Self {
            _dir: dir,
            experiment,
            trials,
        }
    }

    /// The trials recorded again as a later run would, with `resources.pack = pack`.
    fn record_again(&self, pack: usize) {
        let ids = record_trials(&self.experiment.db, self.trials.len(), pack);
        assert_eq!(ids, self.trials, "where a trial runs is not its identity");
    }

    fn run(
        &self,
        scripts: Vec<(usize, Vec<Script>)>,
        options: RunOptions,
        reporter: impl FnOnce(mpsc::UnboundedSender<StopRequest>) -> Signaller,
    ) -> (RunSummary, Vec<RunEvent>) {
        let (summary, events, _) = self.run_jobs(scripts, options, reporter);
        (summary, events)
    }

    /// [`Fixture::run`], with the trials of every job launched.
    fn run_jobs(
        &self,
        scripts: Vec<(usize, Vec<Script>)>,
        options: RunOptions,
        reporter: impl FnOnce(mpsc::UnboundedSender<StopRequest>) -> Signaller,
    ) -> (RunSummary, Vec<RunEvent>, Vec<Vec<String>>) {
        let backend = FakeBackend {
            launched: Mutex::new(Vec::new()),
            db: self.experiment.db.clone(),
            experiment: self.experiment.name.clone(),
            scripts: Mutex::new(
                scripts
                    .into_iter()
                    .map(|(i, s)| (self.trials[i].clone(), s.into()))
                    .collect(),
            ),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut reporter = reporter(tx);
        let machine = Machine {
            cores: 2,
            gpus: Vec::new(),
            gpu_memory: None,
        };
        let summary = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(dispatch(
                &self.experiment,
                &self.trials,
                &options,
                &machine,
                &backend,
                &mut reporter,
                rx,
            ))
            .unwrap();
        let launched = backend.launched.into_inner().unwrap();
        (summary, reporter.log.events, launched)
    }

    fn status(&self, i: usize) -> (TrialStatus, Option<String>) {
        crate::store::block_on(async {
            let store = Store::open(&self.experiment.db).await.unwrap();
            let t = store
                .stored_trial(&self.experiment.name, &self.trials[i])
                .await
                .unwrap();
            (t.status, t.error)
        })
    }
}

fn options(fail_fast: bool, max_retries: u32) -> RunOptions {
    RunOptions {
        fail_fast,
        max_retries,
        stale_after: Duration::from_secs(60),
        cpu_slots: Some(2),
        detach: false,
    }
}

fn quiet(stops: mpsc::UnboundedSender<StopRequest>) -> Signaller {
    Signaller {
        log: EventLog::default(),
        stops,
        signal_after_starts: None,
        signal_after_cancelled: false,
    }
}

#[test]
fn fail_fast_stops_the_others_and_the_run_failed_naming_the_trial() {
    let f = Fixture::new(3);
    let scripts = vec![
        (0, vec![Script::Fail("loss became inf at step 2")]),
        (1, vec![Script::RunUntilStopped]),
    ];
    let (summary, events) = f.run(scripts, options(true, 0), quiet);
    assert_eq!(
        summary.outcome(),
        RunOutcome::Failed,
        "not cancelled: {events:?}"
    );
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].job.trials, [f.trials[0].clone()]);
    assert_eq!(summary.failures[0].reason, "loss became inf at step 2");
    assert!(matches!(summary.stop, Some(StopReason::FailFast { .. })));
    assert_eq!(f.status(0).0, TrialStatus::Failed);
    assert_eq!(
        f.status(1).0,
        TrialStatus::Killed,
        "checkpointed and stopped"
    );
    assert_eq!(f.status(2).0, TrialStatus::Pending, "never started");
    assert_eq!(summary.launched, 2);
}

#[test]
fn without_fail_fast_a_failure_leaves_the_others_to_complete() {
    let f = Fixture::new(3);
    let scripts = vec![(1, vec![Script::Fail("loss became inf at step 2")])];
    let (summary, _) = f.run(scripts, options(false, 0), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Failed);
    assert_eq!(summary.succeeded, 2);
    assert_eq!(f.status(0).0, TrialStatus::Completed);
    assert_eq!(f.status(2).0, TrialStatus::Completed);
}

#[test]
fn max_retries_runs_a_failed_job_again() {
    let f = Fixture::new(1);
    let scripts = vec![(0, vec![Script::Fail("flaky"), Script::Succeed])];
    let (summary, events) = f.run(scripts.clone(), options(false, 1), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Completed);
    assert_eq!(summary.launched, 2);
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::JobEnded {
            outcome: JobOutcome::Retrying {
                attempt: 1,
                retries: 1,
                ..
            },
            ..
        }
    )));
    assert_eq!(f.status(0).0, TrialStatus::Completed);

    let f = Fixture::new(1);
    let (summary, _) = f.run(scripts, options(false, 0), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Failed);
    assert_eq!(summary.launched, 1);
}

#[test]
fn a_signal_stops_gracefully_and_a_second_one_kills() {
    let f = Fixture::new(3);
    let scripts = vec![
        (0, vec![Script::IgnoreGraceful]),
        (1, vec![Script::RunUntilStopped]),
    ];
    let (summary, events) = f.run(scripts, options(false, 0), |stops| Signaller {
        log: EventLog::default(),
        stops,
        signal_after_starts: Some(2),
        signal_after_cancelled: true,
    });
    assert_eq!(summary.outcome(), RunOutcome::Cancelled);
    assert_eq!(
        summary.stop,
        Some(StopReason::Kill {
            name: "SIGINT".into()
        })
    );
    let stops: Vec<&StopReason> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Stopping { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(matches!(
        stops[..],
        [StopReason::Signal { .. }, StopReason::Kill { .. }]
    ));
    // The graceful one recorded itself; the killed one is recorded by the dispatcher.
    assert_eq!(f.status(1).0, TrialStatus::Killed);
    let (status, error) = f.status(0);
    assert_eq!(status, TrialStatus::Killed);
    assert!(error.unwrap().contains("signal 9"));
    assert_eq!(f.status(2).0, TrialStatus::Pending);
    assert!(summary.failures.is_empty());
}

#[test]
fn a_worker_that_cannot_start_fails_its_trial_and_the_rest_run() {
    let f = Fixture::new(2);
    let scripts = vec![(0, vec![Script::CannotStart])];
    let (summary, _) = f.run(scripts, options(false, 0), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Failed);
    assert!(summary.failures[0]
        .reason
        .contains("could not start a worker"));
    let (status, error) = f.status(0);
    assert_eq!(status, TrialStatus::Failed);
    assert!(error.unwrap().contains("no such program"));
    assert_eq!(f.status(1).0, TrialStatus::Completed);
}

#[test]
fn a_lost_worker_leaves_its_trial_killed_and_resumable_at_once() {
    let f = Fixture::new(1);
    let scripts = vec![(0, vec![Script::Lost])];
    let (summary, _) = f.run(scripts, options(false, 0), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Failed);
    let (status, error) = f.status(0);
    assert_eq!(status, TrialStatus::Killed, "not left `running`");
    let error = error.unwrap();
    assert!(
        error.contains("lost track of its worker") && error.contains("resumable"),
        "{error}"
    );
}

#[test]
fn a_later_run_schedules_recorded_trials_by_its_own_resources() {
    // Recorded by a run that trained them one at a time; run again with packs of 3 (as
    // `--set resources.pack=3` would): one pack, not the first run's three jobs.
    let f = Fixture::packed(3, 1);
    f.record_again(3);
    let (summary, _, launched) = f.run_jobs(Vec::new(), options(false, 0), quiet);
    assert_eq!(summary.outcome(), RunOutcome::Completed);
    assert_eq!(launched, std::slice::from_ref(&f.trials));
}

#[test]
fn trials_of_one_shape_train_in_packs_and_each_ends_on_its_own() {
    let f = Fixture::packed(3, 2);
    let scripts = vec![(0, vec![Script::PackMemberFails(1)])];
    let (summary, events, launched) = f.run_jobs(scripts, options(false, 0), quiet);
    assert_eq!(
        launched,
        [
            vec![f.trials[0].clone(), f.trials[1].clone()],
            vec![f.trials[2].clone()]
        ]
    );
    assert_eq!(summary.outcome(), RunOutcome::Failed);
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].job.trials, [f.trials[1].clone()]);
    assert_eq!(summary.failures[0].reason, "loss became NaN");
    assert_eq!(summary.succeeded, 2);
    assert_eq!(f.status(0).0, TrialStatus::Completed);
    assert_eq!(f.status(1).0, TrialStatus::Failed);
    assert_eq!(f.status(2).0, TrialStatus::Completed);
    let ended = events
        .iter()
        .filter(|e| matches!(e, RunEvent::JobEnded { .. }))
        .count();
    assert_eq!(ended, 3, "one end per trial");
}
