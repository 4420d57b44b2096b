//! Jobs and the run's starting state: which trials train, which checkpoints wait for an
//! evaluation, and which `running` trials are really dead (stale).

use std::time::Duration;

use crate::spec::Spec;
use crate::store::{parse_timestamp, RunningTrial};

/// What a worker is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Train the trial from its latest checkpoint to the end (and evaluate the end).
    Train,
    /// Evaluate the trial's checkpoint at `step`.
    Evaluate { step: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The trial, or the members of a pack (they train together in one worker).
    pub trials: Vec<String>,
    pub kind: JobKind,
    /// Failed attempts so far (retries come from `--max-retries`).
    pub failures: u32,
    /// A job of the backend that already runs these trials (queued or running, started by
    /// an earlier run): follow it rather than start them again.
    pub attach: Option<String>,
}

impl Job {
    pub fn train(trial: &str) -> Self {
        Self::train_pack(vec![trial.to_owned()])
    }

    /// Trials that train together as one batched model.
    pub fn train_pack(trials: Vec<String>) -> Self {
        assert!(!trials.is_empty(), "a job has a trial");
        Self {
            trials,
            kind: JobKind::Train,
            failures: 0,
            attach: None,
        }
    }

    pub fn evaluate(trial: &str, step: u64) -> Self {
        Self::evaluate_pack(vec![trial.to_owned()], step)
    }

    /// The checkpoints at `step` of trials evaluated together as one batched rollout.
    pub fn evaluate_pack(trials: Vec<String>, step: u64) -> Self {
        assert!(!trials.is_empty(), "a job has a trial");
        Self {
            trials,
            kind: JobKind::Evaluate { step },
            failures: 0,
            attach: None,
        }
    }

    /// The same job as seen by one of its trials (a pack member's outcome is its own).
    pub fn for_trial(&self, trial: &str) -> Self {
        Self {
            trials: vec![trial.to_owned()],
            ..self.clone()
        }
    }

    /// The first trial: the one a pack's files (its worker log) are kept with.
    pub fn lead(&self) -> &str {
        &self.trials[0]
    }

    pub fn describe(&self) -> String {
        match (self.kind, &self.trials[..]) {
            (JobKind::Train, [trial]) if self.attach.is_some() => {
                format!("follow {trial}")
            }
            (JobKind::Train, [trial]) => format!("train {trial}"),
            (JobKind::Train, trials) => {
                format!("train pack of {} ({})", trials.len(), trials.join(" "))
            }
            (JobKind::Evaluate { step }, [trial]) => format!("evaluate {trial} step {step}"),
            (JobKind::Evaluate { step }, trials) => format!(
                "evaluate pack of {} ({}) step {step}",
                trials.len(),
                trials.join(" ")
            ),
        }
    }
}

/// The checkpoints (of those given) that the spec's `train.eval_every` asks to evaluate:
/// its multiples before the last step (the last is evaluated by the trial itself).
pub fn evaluation_steps(spec: &Spec, checkpoints: &[u64]) -> Vec<u64> {
    let every = spec.train.eval_every;
    checkpoints
        .iter()
        .copied()
        .filter(|&s| every > 0 && s > 0 && s % every == 0 && s < spec.train.iterations)
        .collect()
}

/// Whether a trial recorded as `running` still has a live worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Its worker is gone; the reason says how that was seen.
    Stale(String),
}

/// A running trial is alive while its heartbeat is fresh and, on this host, its process
/// exists. `now` is seconds since the epoch.
pub fn liveness(trial: &RunningTrial, host: &str, now: f64, stale_after: Duration) -> Liveness {
    let age = trial
        .heartbeat_at
        .as_deref()
        .and_then(parse_timestamp)
        .map(|t| (now - t).max(0.0));
    if let (Some(pid), Some(h)) = (trial.pid, trial.host.as_deref()) {
        if h == host && !pid_alive(pid) {
            return Liveness::Stale(format!(
                "its worker (pid {pid}) ended without recording how; last heartbeat {}",
                age.map_or("never".into(), |a| format!("{a:.0} s ago"))
            ));
        }
    }
    match age {
        Some(age) if age > stale_after.as_secs_f64() => Liveness::Stale(format!(
            "no heartbeat for {age:.0} s (stale after {} s)",
            stale_after.as_secs()
        )),
        None => Liveness::Stale("it never wrote a heartbeat".into()),
        Some(_) => Liveness::Alive,
    }
}

/// Whether a process with this pid exists on this host and is not a zombie.
pub fn pid_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) if std::path::Path::new("/proc/self").exists() => false,
        // No /proc: ask the kernel whether the pid exists.
        // SAFETY: signal 0 only checks for existence and permission.
        Err(_) => unsafe { libc::kill(pid as libc::pid_t, 0) == 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now;

    fn running(pid: Option<i64>, host: &str, heartbeat: Option<String>) -> RunningTrial {
        RunningTrial {
            id: "t".into(),
            pid,
            host: Some(host.into()),
            heartbeat_at: heartbeat,
        }
    }

    #[test]
    fn a_trial_is_stale_when_its_process_is_gone_or_its_heartbeat_old() {
        let t_now = parse_timestamp(&now()).unwrap();
        let fresh = Some(now());
        let me = std::process::id() as i64;
        let after = Duration::from_secs(60);
        assert_eq!(
            liveness(&running(Some(me), "h", fresh.clone()), "h", t_now, after),
            Liveness::Alive
        );
        // pid_max is at most 2^22: this pid cannot exist.
        let gone = running(Some(9_999_999), "h", fresh.clone());
        assert!(
            matches!(liveness(&gone, "h", t_now, after), Liveness::Stale(r) if r.contains("pid 9999999"))
        );
        // Another host's pid is not checked here; only its heartbeat counts.
        let elsewhere = running(Some(9_999_999), "other", fresh);
        assert_eq!(liveness(&elsewhere, "h", t_now, after), Liveness::Alive);
        let old = running(Some(me), "h", Some("2000-01-01T00:00:00.000Z".into()));
        assert!(
            matches!(liveness(&old, "h", t_now, after), Liveness::Stale(r) if r.contains("no heartbeat"))
        );
        assert!(matches!(
            liveness(&running(None, "h", None), "h", t_now, after),
            Liveness::Stale(_)
        ));
    }

    #[test]
    fn evaluation_steps_are_multiples_of_eval_every_before_the_end() {
        let mut spec = Spec::default();
        spec.train.iterations = 1000;
        spec.train.eval_every = 300;
        assert_eq!(
            evaluation_steps(&spec, &[100, 300, 500, 600, 900, 1000]),
            [300, 600, 900]
        );
        spec.train.eval_every = 0;
        assert!(evaluation_steps(&spec, &[300, 1000]).is_empty());
    }
}
