//! Whether a Langevin step may use its fused kernels, and the check that earns it. Two
//! parts of the step have them: the gradient (a cuBLASLt ReLU epilogue and our run-time
//! compiled kernels, see [`super::input_gradient`]) and the update of the samples (one
//! kernel for ATen's five, see [`super::langevin`]), each with its own [`Guard`].
//! The fused kernels compute what the eager ones compute, with other rounding. For each
//! configuration (element type, sizes) the eager result is returned until the fused one
//! has agreed with it on the first calls; after a failure or a disagreement that
//! configuration is computed eagerly for good, with a warning.
//!
//! The checks read the device's results (a wait), so they must be done before any CUDA
//! graph capture: a chain's capture is preceded by an eager warm-up of all its steps, which
//! makes these calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::policy::cuda_graph;

/// Calls compared with the eager result before the fused kernels are trusted, per
/// configuration (element type, pack and layer sizes).
const CHECKED_CALLS: u32 = 2;

/// Largest mean difference from the eager result, as a share of its mean magnitude, that
/// counts as the same result: different kernels round differently (a gradient in bf16 ~1%,
/// ReLU masks flip near zero), while a wrong kernel is off by about the whole result.
const AGREEMENT: f64 = 0.03;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Checking { left: u32 },
    Trusted,
    Failed,
}

/// Whether this process may use one part's fused kernels (a bench switches them off to
/// compare), and per configuration how far their checks went.
pub struct Guard {
    /// What the kernels compute, for the log.
    part: &'static str,
    wanted: AtomicBool,
    states: Mutex<BTreeMap<Vec<i64>, State>>,
    /// Whether the last result returned came from the fused kernels.
    last_fused: AtomicBool,
}

/// The process's guard of the Langevin gradient's fused steps.
pub static GRADIENT: Guard = Guard::new("Langevin gradient");

/// The process's guard of the fused update of Langevin samples.
pub static UPDATE: Guard = Guard::new("Langevin update");

/// Lets (or stops) the process use the fused kernels of both parts where it can.
pub fn set_enabled(on: bool) {
    for guard in [&GRADIENT, &UPDATE] {
        guard.set_wanted(on);
    }
}

/// Whether the process's last Langevin gradient came from the fused steps (for the
/// bench's figures).
pub fn in_use() -> bool {
    GRADIENT.last_fused.load(Ordering::Relaxed)
}

/// Whether the process's last update of Langevin samples came from the fused kernel.
pub fn update_in_use() -> bool {
    UPDATE.last_fused.load(Ordering::Relaxed)
}

impl Guard {
    pub const fn new(part: &'static str) -> Self {
        Self {
            part,
            wanted: AtomicBool::new(true),
            states: Mutex::new(BTreeMap::new()),
            last_fused: AtomicBool::new(false),
        }
    }

    /// Lets (or stops) this part use its fused kernels where it can.
    pub fn set_wanted(&self, on: bool) {
        self.wanted.store(on, Ordering::Relaxed);
    }

    fn state(&self, key: &[i64]) -> State {
        let states = self.states.lock().expect("guard state");
        states.get(key).copied().unwrap_or(State::Checking {
            left: CHECKED_CALLS,
        })
    }

    fn set(&self, key: &[i64], state: State) {
        self.states
            .lock()
            .expect("guard state")
            .insert(key.to_vec(), state);
    }

    /// The gradient of configuration `key`: `fused()` where it is wanted, has not failed
    /// and has been checked, else `eager()` (also compared with `fused()` while checks are
    /// left).
    pub fn gradient(
        &self,
        key: &[i64],
        eager: impl FnOnce() -> Tensor,
        fused: impl FnOnce() -> Result<Tensor>,
    ) -> Tensor {
        self.compute(key, eager, fused, agree)
    }

    /// [`Self::gradient`] for any result, compared by `same` (the eager result first; an
    /// error is a disagreement).
    pub fn compute(
        &self,
        key: &[i64],
        eager: impl FnOnce() -> Tensor,
        fused: impl FnOnce() -> Result<Tensor>,
        same: impl FnOnce(&Tensor, &Tensor) -> Result<()>,
    ) -> Tensor {
        self.last_fused.store(false, Ordering::Relaxed);
        if !self.wanted.load(Ordering::Relaxed) {
            return eager();
        }
        match self.state(key) {
            State::Failed => eager(),
            State::Trusted => match fused() {
                Ok(gradient) => {
                    self.last_fused.store(true, Ordering::Relaxed);
                    gradient
                }
                Err(e) => {
                    self.give_up(key, &format!("{e:#}"));
                    eager()
                }
            },
            // A check reads results back, which a CUDA graph capture forbids: the capture
            // takes the eager products (a chain's eager warm-up, which precedes it, does
            // the checks; only a chain of one step leaves some to its capture).
            State::Checking { .. } if cuda_graph::capturing() => eager(),
            State::Checking { left } => {
                let reference = eager();
                match fused().and_then(|result| same(&reference, &result)) {
                    Ok(()) if left <= 1 => {
                        self.set(key, State::Trusted);
                        tracing::info!("{} {key:?}: fused kernels checked", self.part);
                    }
                    Ok(()) => self.set(key, State::Checking { left: left - 1 }),
                    Err(e) => self.give_up(key, &format!("{e:#}")),
                }
                reference
            }
        }
    }

    fn give_up(&self, key: &[i64], why: &str) {
        if self.state(key) != State::Failed {
            self.set(key, State::Failed);
            tracing::warn!("{} {key:?}: eager kernels from now on ({why})", self.part);
        }
    }
}

/// Whether `fused` is `eager` to [`AGREEMENT`].
pub(super) fn agree(eager: &Tensor, fused: &Tensor) -> Result<()> {
    ensure!(
        eager.size() == fused.size(),
        "fused result of shape {:?}, eager {:?}",
        fused.size(),
        eager.size()
    );
    let eager = eager.to_kind(Kind::Float);
    let scale = eager.abs().mean(Kind::Float).double_value(&[]);
    let error = (fused.to_kind(Kind::Float) - &eager)
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    ensure!(
        error.is_finite() && error <= AGREEMENT * scale + 1e-12,
        "fused result differs from the eager one by {error:.3e} on average \
         (its scale {scale:.3e})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::bail;
    use tch::Device;

    use super::*;

    const KEY: &[i64] = &[0, 1, 4, 16, 264];

    fn gradient() -> Tensor {
        Tensor::from_slice(&[1.0f32, -2.0, 0.5, 4.0]).to_device(Device::Cpu)
    }

    #[test]
    fn a_fused_gradient_that_agrees_is_used_only_after_its_checks() {
        let guard = Guard::new("test");
        let close = || Ok(gradient() * 1.001);
        for _ in 0..CHECKED_CALLS {
            assert_ne!(guard.state(KEY), State::Trusted);
            let g = guard.gradient(KEY, gradient, close);
            assert_eq!(
                g,
                gradient(),
                "while checking, the eager gradient is returned"
            );
            assert!(!guard.last_fused.load(Ordering::Relaxed));
        }
        assert_eq!(guard.state(KEY), State::Trusted);
        let g = guard.gradient(KEY, || panic!("eager not computed once trusted"), close);
        assert_eq!(g, gradient() * 1.001);
        assert!(guard.last_fused.load(Ordering::Relaxed));
        // Another configuration is checked on its own.
        let other = &[1, 0, 4, 16, 264];
        assert_eq!(guard.gradient(other, gradient, close), gradient());
        assert_eq!(guard.state(other), State::Checking { left: 1 });
    }

    #[test]
    fn a_capture_takes_the_eager_gradient_while_checks_are_left_and_counts_none() {
        let guard = Guard::new("test");
        let never = || -> Result<Tensor> { panic!("no check during a capture") };
        let g = cuda_graph::as_capture(|| guard.gradient(KEY, gradient, never));
        assert_eq!(g, gradient());
        assert_eq!(
            guard.state(KEY),
            State::Checking {
                left: CHECKED_CALLS
            }
        );
        assert!(
            !cuda_graph::capturing(),
            "the flag is reset after the capture"
        );
        // Once trusted, a capture takes the fused gradient.
        guard.set(KEY, State::Trusted);
        let close = || Ok(gradient() * 1.001);
        let g = cuda_graph::as_capture(|| guard.gradient(KEY, || panic!("eager"), close));
        assert_eq!(g, gradient() * 1.001);
    }

    #[test]
    fn a_fused_gradient_that_disagrees_or_fails_is_never_used_again() {
        for fused in [
            Box::new(|| Ok(gradient() * 1.5)) as Box<dyn Fn() -> Result<Tensor>>,
            Box::new(|| Ok(gradient().narrow(0, 0, 2))),
            Box::new(|| bail!("no algorithm")),
            Box::new(|| Ok(gradient() * f64::NAN)),
        ] {
            let guard = Guard::new("test");
            assert_eq!(guard.gradient(KEY, gradient, &fused), gradient());
            for _ in 0..3 {
                let g = guard.gradient(KEY, gradient, || panic!("fused not tried after failing"));
                assert_eq!(g, gradient());
            }
            assert_eq!(guard.state(KEY), State::Failed);
            // A configuration that failed leaves the others to their own checks.
            let other = &[1, 0, 4, 16, 264];
            let _ = guard.gradient(other, gradient, || Ok(gradient()));
            assert_eq!(guard.state(other), State::Checking { left: 1 });
        }
    }

    #[test]
    fn a_trusted_fused_gradient_that_fails_later_gives_way_to_the_eager_one() {
        let guard = Guard::new("test");
        for _ in 0..CHECKED_CALLS {
            let _ = guard.gradient(KEY, gradient, || Ok(gradient()));
        }
        assert_eq!(guard.gradient(KEY, gradient, || bail!("lost")), gradient());
        assert_eq!(guard.state(KEY), State::Failed);
        assert!(!guard.last_fused.load(Ordering::Relaxed));
    }

    #[test]
    fn a_guard_not_wanted_computes_eagerly_only() {
        let guard = Guard::new("test");
        guard.wanted.store(false, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(
                guard.gradient(KEY, gradient, || panic!("fused not wanted")),
                gradient()
            );
        }
    }
}
