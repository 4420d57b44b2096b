//! What an iteration reports: its scalars, read on the host one iteration late where the
//! caller allows it, so a GPU never idles while the host waits for them.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::transfer::PendingScalars;

/// Scalars of one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct StepMetrics {
    /// The iteration just completed (1-based: the number of updates applied so far).
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    /// EBM only (zero for MSE).
    pub info_nce: f64,
    pub grad_penalty: f64,
    pub energy_positive: f64,
    pub energy_negative: f64,
    /// L2 norm of all weight gradients before the update.
    pub grad_norm: f64,
}

/// The scalars of [`StepMetrics`] after `step` and `lr`, in field order.
pub const SCALARS: usize = 6;

/// An iteration of K members whose work is queued and whose scalars are on their way to
/// the host: [`QueuedStep::metrics`] waits for them (and only for them).
pub struct QueuedStep {
    step: u64,
    lrs: Vec<f64>,
    /// `[SCALARS, K]`.
    scalars: PendingScalars,
}

impl QueuedStep {
    /// `scalars`: `[SCALARS, K]` on the training device, `lrs` the K learning rates used.
    pub fn new(step: u64, lrs: Vec<f64>, scalars: &Tensor) -> Self {
        debug_assert_eq!(scalars.size(), [SCALARS as i64, lrs.len() as i64]);
        Self {
            step,
            lrs,
            scalars: PendingScalars::queue(scalars),
        }
    }

    /// Iteration `step` of no members.
    pub fn empty(step: u64) -> Self {
        let none = Tensor::zeros([SCALARS as i64, 0], (Kind::Double, Device::Cpu));
        Self::new(step, Vec::new(), &none)
    }

    /// Each member's metrics, in member order.
    pub fn metrics(self) -> Vec<StepMetrics> {
        let k = self.lrs.len();
        let v = self.scalars.wait();
        (0..k)
            .map(|i| StepMetrics {
                step: self.step,
                lr: self.lrs[i],
                loss: v[i],
                info_nce: v[k + i],
                grad_penalty: v[2 * k + i],
                energy_positive: v[3 * k + i],
                energy_negative: v[4 * k + i],
                grad_norm: v[5 * k + i],
            })
            .collect()
    }
}
