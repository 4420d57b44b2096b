//! A solo trainer's iteration as one CUDA graph: a small network's step (MSE's 16-deep
//! ResNet: hundreds of small kernels for forward, backward and update) waits on the host's
//! launches, not on the GPU; replayed, it is one launch. Everything the step reads from the host
//! goes in as device tensors (the learning rate, the optimizer's step count), and its
//! random draws take their seed from libtorch's generator at each replay, which the
//! trainer seeds per iteration as it does for an eager step: so a replayed iteration draws
//! what the eager one draws.
//!
//! The graph is trusted only after its first replay matched an eager step from the same
//! weights (the gradients both computed); otherwise training goes on eagerly.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::policy::cuda_graph::CapturedFn;
use crate::policy::ebm::NegativeKind;
use crate::policy::PolicySpec;

/// Where a trainer is in replaying its iterations from a CUDA graph.
pub(super) enum StepGraph {
    /// Every iteration eager: on the CPU, graphs off, or a graph that failed or disagreed.
    Off,
    /// Captured at the next iteration (after a first eager one).
    Pending,
    /// Captured; its first replay is checked against an eager step.
    Checking(Replay),
    /// Checked: every iteration is a replay.
    Replaying(Replay),
}

impl StepGraph {
    /// Pending where `spec`'s iteration can be captured ([`captures`]) on a GPU with
    /// graphs allowed.
    pub(super) fn for_spec(spec: &PolicySpec, on_gpu: bool, allowed: bool) -> Self {
        if captures(spec) && on_gpu && allowed && crate::policy::cuda_graph::available() {
            StepGraph::Pending
        } else {
            StepGraph::Off
        }
    }

    pub(super) fn replaying(&self) -> bool {
        matches!(self, StepGraph::Replaying(_))
    }
}

/// Whether nothing in an iteration of `spec` reads the host: MSE, and energy models whose
/// counter-examples are uniform draws (a solo Langevin or DFO search is not captured).
pub(super) fn captures(spec: &PolicySpec) -> bool {
    match spec {
        PolicySpec::Mse { .. } | PolicySpec::ArEbm { .. } => true,
        PolicySpec::Ebm { loss, .. } => loss.negatives.kind == NegativeKind::Uniform,
    }
}

/// A captured iteration and the learning rate it reads.
pub(super) struct Replay {
    graph: CapturedFn,
    /// A one-element float tensor on the device: set before each replay.
    lr: Tensor,
}

impl Replay {
    /// Captures `step` (one iteration: gradients, update; returns its scalars), which
    /// runs once for real first (the capture's warm-up, on a side stream): that run's
    /// scalars come back beside.
    pub(super) fn capture(
        lr: f64,
        device: tch::Device,
        step: impl Fn(&Tensor) -> Tensor,
    ) -> Result<(Self, Tensor)> {
        let rate = Tensor::full([1], lr, (Kind::Float, device));
        let (graph, scalars) =
            CapturedFn::capture(&[rate.shallow_clone()], |inputs| step(&inputs[0]))?;
        Ok((Self { graph, lr: rate }, scalars))
    }

    /// One iteration at learning rate `lr`: its scalars (a copy; the next replay
    /// overwrites the graph's).
    pub(super) fn run(&self, lr: f64) -> Result<Tensor> {
        tch::no_grad(|| {
            let _ = self.lr.shallow_clone().fill_(lr);
        });
        self.graph.run(&[self.lr.shallow_clone()])
    }
}

/// The largest difference between `a` and `b` (lists of tensors alike), relative to the
/// largest magnitude in `b`; infinite where either holds a NaN or infinity, or the lists
/// differ in length (no agreement to speak of).
pub(super) fn relative_difference(a: &[Tensor], b: &[Tensor]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut scale) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        // A NaN or infinity in either makes these NaN or infinite (`f64::max` would drop a NaN).
        let (d, s) = (
            (x - y).abs().max().double_value(&[]),
            y.abs().max().double_value(&[]),
        );
        if !(d.is_finite() && s.is_finite()) {
            return f64::INFINITY;
        }
        diff = diff.max(d);
        scale = scale.max(s);
    }
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    }
}

/// Largest relative difference between a replay's gradients and an eager step's that
/// still counts as the same computation: rounding (kernels may differ in order), where
/// other random draws or stale inputs change gradients wholesale.
pub(super) const AGREEMENT: f64 = 1e-3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_difference_is_scaled_by_the_reference() {
        let b = [
            Tensor::from_slice(&[2f32, -4.0]),
            Tensor::from_slice(&[1f32]),
        ];
        let a = [
            Tensor::from_slice(&[2f32, -4.0]),
            Tensor::from_slice(&[1.4f32]),
        ];
        let d = relative_difference(&a, &b);
        assert!((d - 0.1).abs() < 1e-6, "{d}");
        assert_eq!(relative_difference(&b, &b), 0.0);
        let nan = [
            Tensor::from_slice(&[2f32, f32::NAN]),
            Tensor::from_slice(&[1f32]),
        ];
        assert_eq!(relative_difference(&nan, &b), f64::INFINITY);
        assert_eq!(relative_difference(&b, &nan), f64::INFINITY);
        assert_eq!(relative_difference(&b[..1], &b), f64::INFINITY);
    }

    #[test]
    fn only_iterations_that_read_nothing_from_the_host_are_captured() {
        let mse = PolicySpec::Mse {
            net: Default::default(),
        };
        assert!(captures(&mse));
        let langevin = PolicySpec::Ebm {
            net: Default::default(),
            loss: Default::default(),
            inference: Default::default(),
        };
        assert!(
            !captures(&langevin),
            "the default counter-examples are Langevin's"
        );
        let PolicySpec::Ebm { mut loss, .. } = langevin else {
            unreachable!()
        };
        loss.negatives.kind = NegativeKind::Uniform;
        let uniform = PolicySpec::Ebm {
            net: Default::default(),
            loss,
            inference: Default::default(),
        };
        assert!(captures(&uniform));
        for spec in [&mse, &uniform] {
            assert!(matches!(
                StepGraph::for_spec(spec, false, true),
                StepGraph::Off
            ));
            assert!(matches!(
                StepGraph::for_spec(spec, true, false),
                StepGraph::Off
            ));
        }
    }
}
