//! Evaluations that stop when asked: an actor wrapped in [`Cancellable`] fails its next
//! call once the flag is set, so the rollout ends within one environment step (an
//! evaluation of Langevin inference on the CPU can take minutes) and nothing is recorded.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use super::{Actor, PackActor};

/// The error of an evaluation stopped by its cancel flag.
#[derive(Debug, thiserror::Error)]
#[error("cancelled before the evaluation ended; nothing recorded")]
pub struct Cancelled;

/// Whether `error` (or what it wraps) is a [`Cancelled`].
pub fn is_cancelled(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Cancelled>().is_some()
}

/// `inner`, acting until `cancel` is set.
pub struct Cancellable<'a, A: ?Sized> {
    inner: &'a A,
    cancel: &'a AtomicBool,
}

impl<'a, A: ?Sized> Cancellable<'a, A> {
    pub fn new(inner: &'a A, cancel: &'a AtomicBool) -> Self {
        Self { inner, cancel }
    }

    fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Cancelled.into());
        }
        Ok(())
    }
}

impl<A: Actor + ?Sized> Actor for Cancellable<'_, A> {
    fn obs_seq_len(&self) -> usize {
        self.inner.obs_seq_len()
    }

    fn act(&self, windows: &[f32], batch: usize, seed: u64) -> Result<Vec<f32>> {
        self.check()?;
        self.inner.act(windows, batch, seed)
    }
}

impl<A: PackActor + ?Sized> PackActor for Cancellable<'_, A> {
    fn obs_seq_len(&self) -> usize {
        self.inner.obs_seq_len()
    }

    fn act_all(&self, windows: &[&[f32]], seeds: &[u64]) -> Result<Vec<Vec<f32>>> {
        self.check()?;
        self.inner.act_all(windows, seeds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::rollout;
    use crate::task::{episode_seeds, TaskConfig};

    /// Counts its calls and sets the flag at the `stop_at`-th.
    struct Stepper<'a> {
        calls: std::cell::Cell<usize>,
        stop_at: usize,
        cancel: &'a AtomicBool,
    }

    impl Actor for Stepper<'_> {
        fn obs_seq_len(&self) -> usize {
            1
        }

        fn act(&self, _windows: &[f32], batch: usize, _seed: u64) -> Result<Vec<f32>> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() == self.stop_at {
                self.cancel.store(true, Ordering::Relaxed);
            }
            Ok(vec![0.0; batch * 2])
        }
    }

    #[test]
    fn a_rollout_stops_at_the_step_after_the_flag_is_set() {
        let task = TaskConfig::default().build().unwrap();
        let cancel = AtomicBool::new(false);
        let stepper = Stepper {
            calls: Default::default(),
            stop_at: 3,
            cancel: &cancel,
        };
        let err = rollout(
            task.as_ref(),
            &Cancellable::new(&stepper, &cancel),
            &episode_seeds(0, 4),
            0,
        )
        .unwrap_err()
        .context("evaluating trial x");
        assert!(is_cancelled(&err), "{err:#}");
        assert_eq!(stepper.calls.get(), 3, "no call after the flag was set");

        // Unset, the same actor runs its episodes to the end.
        let free = AtomicBool::new(false);
        let stepper = Stepper {
            calls: Default::default(),
            stop_at: usize::MAX,
            cancel: &free,
        };
        let records = rollout(
            task.as_ref(),
            &Cancellable::new(&stepper, &free),
            &episode_seeds(0, 4),
            0,
        )
        .unwrap();
        assert_eq!(records.len(), 4);
    }
}
