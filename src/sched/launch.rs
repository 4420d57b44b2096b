//! The worker command of a job: `ebmlab worker ...` with the slot's device and threads.

use std::path::Path;

use anyhow::{Context, Result};

use super::backend::Launch;
use super::dispatch::Experiment;
use super::jobs::{Job, JobKind};
use super::slots::{Slot, SlotDevice};
use crate::trial::TrialPaths;

/// The log file of a job, in its (lead) trial's folder.
pub fn job_log(trial_dir: &Path, job: &Job) -> std::path::PathBuf {
    trial_dir.join(match job.kind {
        JobKind::Train => "worker.log".to_owned(),
        JobKind::Evaluate { step } => format!("evaluate_step_{step:07}.log"),
    })
}

/// What the backend starts for `job` on `slot`.
pub fn worker_launch(
    experiment: &Experiment,
    job: &Job,
    slot: &Slot,
    paths: &TrialPaths,
    inline_evaluations: bool,
) -> Result<Launch> {
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    let (device, visible) = match &slot.device {
        SlotDevice::Cpu => ("cpu", String::new()),
        SlotDevice::Cuda { visible } => ("cuda", visible.clone()),
    };
    let threads = slot.threads.to_string();
    let mut args: Vec<String> = vec![
        "worker".into(),
        "--experiment".into(),
        experiment.name.clone(),
        "--runs".into(),
        experiment.runs.display().to_string(),
        "--db".into(),
        experiment.db.arg(),
        "--device".into(),
        device.into(),
        "--threads".into(),
        threads.clone(),
    ];
    for trial in &job.trials {
        args.extend(["--trial".into(), trial.clone()]);
    }
    if let JobKind::Evaluate { step } = job.kind {
        args.extend(["--evaluate".into(), step.to_string()]);
    }
    if inline_evaluations {
        args.push("--inline-evaluations".into());
    }
    Ok(Launch {
        job: job.clone(),
        slot: slot.label(),
        program: std::env::current_exe().context("locating the ebmlab binary")?,
        args,
        env: vec![
            // A worker never picks its own GPU: it sees exactly its slot's (or none).
            ("CUDA_VISIBLE_DEVICES".into(), visible),
            ("RAYON_NUM_THREADS".into(), threads.clone()),
            ("OMP_NUM_THREADS".into(), threads),
        ],
        log: job_log(&paths.dir, job),
    })
}

/// The last lines a worker wrote to its log since `start`, for a failure's reason.
pub fn log_tail(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        format!("no output (log {})", log.display())
    } else {
        format!("{tail} (log {})", log.display())
    }
}
