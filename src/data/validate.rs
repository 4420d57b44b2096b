//! Replays recorded demonstrations through the environment: do the files obey the dynamics,
//! and do they succeed by the task's rule?

use std::path::{Path, PathBuf};

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use super::demo_file::{demo_files, read_demo, ParticleDemo};
use crate::task::particle::{ParticleConfig, ParticleTask};
use crate::task::Episodes;

/// Result of replaying one demonstration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// Largest absolute difference between a recorded and a replayed position component.
    pub position_drift: f32,
    pub velocity_drift: f32,
    /// Success of the replayed trajectory under the task's rule.
    pub success: bool,
}

/// Replays `demo`'s actions from its initial state with the given environment parameters
/// (its dimension and success rule are taken from the demo).
pub fn replay_demo(base: &ParticleConfig, demo: &ParticleDemo) -> Result<Replay> {
    let mut cfg = ParticleConfig {
        n_dim: demo.n_dim(),
        n_steps: demo.actions.len(),
        ..base.clone()
    };
    if demo.multimodal {
        cfg = cfg.multimodal();
    }
    let task = ParticleTask::new(cfg)?;
    let seed = demo.seed.unwrap_or(0);
    let mut episodes = task.episodes_from_states(&[seed], vec![demo.state(0)])?;
    let mut drift = (0.0f32, 0.0f32);
    for (t, action) in demo.actions.iter().enumerate() {
        episodes.step(action)?;
        if let Some(recorded) = demo.positions.get(t + 1) {
            let replayed = episodes.state(0);
            drift.0 = drift.0.max(max_abs_diff(recorded, &replayed.position));
            drift.1 = drift
                .1
                .max(max_abs_diff(&demo.velocities[t + 1], &replayed.velocity));
        }
    }
    Ok(Replay {
        position_drift: drift.0,
        velocity_drift: drift.1,
        success: episodes.outcomes()[0].success,
    })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidFile {
    pub file: PathBuf,
    pub error: String,
}

/// Everything `data validate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub folder: PathBuf,
    /// JSON files found.
    pub files: usize,
    /// Files read and replayed.
    pub episodes: usize,
    pub invalid_files: Vec<InvalidFile>,
    pub max_position_drift: f32,
    pub max_velocity_drift: f32,
    pub successes: usize,
    /// Successes over replayed episodes (0 when none could be replayed).
    pub success_rate: f64,
    pub tolerance: f32,
    /// No invalid file and every drift within the tolerance.
    pub passed: bool,
}

/// Reads every demo in `dir`, replays the readable ones, and collects all problems.
pub fn validate_dir(dir: &Path, base: &ParticleConfig, tolerance: f32) -> Result<ValidationReport> {
    let files = demo_files(dir)?;
    let results: Vec<(PathBuf, Result<Replay, String>)> = files
        .par_iter()
        .map(|file| {
            let replay = read_demo(file).map_err(|e| e.to_string()).and_then(|demo| {
                replay_demo(base, &demo)
                    .map_err(|e| format!("{}: cannot be replayed: {e:#}", file.display()))
            });
            (file.clone(), replay)
        })
        .collect();

    let mut report = ValidationReport {
        folder: dir.to_owned(),
        files: files.len(),
        episodes: 0,
        invalid_files: Vec::new(),
        max_position_drift: 0.0,
        max_velocity_drift: 0.0,
        successes: 0,
        success_rate: 0.0,
        tolerance,
        passed: false,
    };
    for (file, result) in results {
        match result {
            Ok(replay) => {
                report.episodes += 1;
                report.successes += usize::from(replay.success);
                report.max_position_drift = report.max_position_drift.max(replay.position_drift);
                report.max_velocity_drift = report.max_velocity_drift.max(replay.velocity_drift);
            }
            Err(error) => report.invalid_files.push(InvalidFile { file, error }),
        }
    }
    if report.episodes > 0 {
        report.success_rate = report.successes as f64 / report.episodes as f64;
    }
    report.passed = report.invalid_files.is_empty()
        && report.max_position_drift <= tolerance
        && report.max_velocity_drift <= tolerance;
    Ok(report)
}
