//! Value checks that types alone cannot express; each error names the key.

use anyhow::{bail, ensure, Result};

use super::model::{EvalSpec, Spec};

pub const POLICY_KINDS: &[&str] = &["ebm", "ar_ebm", "mse"];

pub fn validate(spec: &Spec) -> Result<()> {
    ensure!(
        !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "name: `{}` must be non-empty letters, digits, `-`, `_` or `.` (it names a folder)",
        spec.name
    );
    spec.task.build()?;
    if !POLICY_KINDS.contains(&spec.policy.kind.as_str()) {
        bail!(
            "policy.kind: unknown policy `{}` (known: {})",
            spec.policy.kind,
            POLICY_KINDS.join(", ")
        );
    }
    let positive = [
        ("data.obs_seq_len", spec.data.obs_seq_len as i64),
        ("policy.hidden", spec.policy.hidden),
        ("train.iterations", spec.train.iterations as i64),
        ("train.batch_size", spec.train.batch_size),
        ("train.lr_decay_steps", spec.train.lr_decay_steps as i64),
        ("train.checkpoint_every", spec.train.checkpoint_every as i64),
        ("train.log_every", spec.train.log_every as i64),
        ("train.negatives.count", spec.train.negatives.count),
        (
            "resources.slots_per_gpu",
            spec.resources.slots_per_gpu as i64,
        ),
    ];
    for (key, value) in positive {
        ensure!(value >= 1, "{key} must be at least 1, got {value}");
    }
    if spec.data.path.is_none() {
        ensure!(
            spec.data.demos >= 1,
            "data.demos must be at least 1 (or set data.path)"
        );
    }
    for (key, value) in [
        ("train.lr", spec.train.lr),
        ("train.lr_decay_rate", spec.train.lr_decay_rate),
        ("train.temperature", spec.train.temperature),
    ] {
        ensure!(
            value.is_finite() && value > 0.0,
            "{key} must be a positive number, got {value}"
        );
    }
    validate_eval(&spec.eval)?;
    let negatives = &spec.train.negatives;
    ensure!(
        (0.0..=1.0).contains(&negatives.refined_fraction),
        "train.negatives.refined_fraction must be in [0, 1], got {}",
        negatives.refined_fraction
    );
    ensure!(
        negatives.dfo_iters >= 1,
        "train.negatives.dfo_iters must be at least 1, got {}",
        negatives.dfo_iters
    );
    ensure!(
        negatives.dfo_noise_scale.is_finite() && negatives.dfo_noise_scale >= 0.0,
        "train.negatives.dfo_noise_scale must be a number >= 0, got {}",
        negatives.dfo_noise_scale
    );
    ensure!(
        (0.0..1.0).contains(&spec.policy.dropout),
        "policy.dropout must be in [0, 1), got {}",
        spec.policy.dropout
    );
    spec.policy_spec()?.check()?;
    parse_device(&spec.resources.device)?;
    for (key, values) in &spec.sweep {
        ensure!(
            !values.is_empty(),
            "sweep.\"{key}\": the list of values is empty"
        );
    }
    Ok(())
}

/// The `[eval]` section's checks (also for `ebmlab eval --set`).
pub fn validate_eval(eval: &EvalSpec) -> Result<()> {
    for (key, value) in [
        ("eval.episodes", eval.episodes as i64),
        ("eval.samples", eval.samples),
        ("eval.langevin_samples", eval.langevin_samples),
    ] {
        ensure!(value >= 1, "{key} must be at least 1, got {value}");
    }
    ensure!(
        eval.temperature.is_finite() && eval.temperature > 0.0,
        "eval.temperature must be a positive number, got {}",
        eval.temperature
    );
    for (key, value) in [
        ("eval.noise_scale", eval.noise_scale),
        ("eval.noise_shrink", eval.noise_shrink),
    ] {
        ensure!(
            value.is_finite() && value >= 0.0,
            "{key} must be a number >= 0, got {value}"
        );
    }
    Ok(())
}

/// A device as the spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

pub fn parse_device(text: &str) -> Result<DeviceChoice> {
    Ok(match text {
        "auto" => DeviceChoice::Auto,
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => DeviceChoice::Cuda(n),
            None => bail!("resources.device: `{other}` is not auto, cpu, cuda or cuda:N"),
        },
    })
}

impl DeviceChoice {
    /// The libtorch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                ensure!(
                    n < count,
                    "resources.device: cuda:{n} requested, {count} CUDA devices present"
                );
                Ok(tch::Device::Cuda(n))
            }
        }
    }
}
