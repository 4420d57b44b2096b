//! Learning-rate schedule: TensorFlow's `ExponentialDecay`, as IBC and the seed use it.

use serde::{Deserialize, Serialize};

/// `lr(step) = lr * decay_rate ^ (step / decay_steps)`, the exponent floored if `staircase`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    pub decay_steps: u64,
    pub decay_rate: f64,
    pub staircase: bool,
}

impl LrSchedule {
    pub fn at(&self, step: u64) -> f64 {
        let exponent = step as f64 / self.decay_steps.max(1) as f64;
        let exponent = if self.staircase {
            exponent.floor()
        } else {
            exponent
        };
        self.lr * self.decay_rate.powf(exponent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_table() {
        let s = LrSchedule {
            lr: 1e-3,
            decay_steps: 100,
            decay_rate: 0.99,
            staircase: false,
        };
        // The seed: 1e-3, 9.9e-4, 9.801e-4, and about 3.66e-4 at step 10,000.
        assert!((s.at(0) - 1e-3).abs() < 1e-15);
        assert!((s.at(100) - 9.9e-4).abs() < 1e-15);
        assert!((s.at(200) - 9.801e-4).abs() < 1e-15);
        assert!(
            (s.at(10_000) - 3.660323e-4).abs() < 1e-9,
            "{}",
            s.at(10_000)
        );
        assert!((s.at(10_000) - 3.66e-4).abs() < 1e-6);
        // Continuous between decay points, staircase holds until the next one.
        assert!(s.at(50) < 1e-3 && s.at(50) > 9.9e-4);
        let stairs = LrSchedule {
            staircase: true,
            ..s
        };
        assert_eq!(stairs.at(50), 1e-3);
        assert_eq!(stairs.at(199), s.at(100));
    }
}
