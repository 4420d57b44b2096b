//! Demonstrations, whatever the task: recorded from its expert, or read from files in the
//! task's own format ([`DemoFiles`]), replayed to validate them, and listed in folders.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::Task;

/// One demonstrated episode as a policy learns from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Demo {
    /// The observation before each action; a final observation after the last action may
    /// follow (`actions.len()` or `actions.len() + 1` rows).
    pub observations: Vec<Vec<f32>>,
    pub actions: Vec<Vec<f32>>,
}

/// A demo made by running the task's expert, with the seed of its episode.
#[derive(Debug, Clone)]
pub struct RecordedDemo {
    pub demo: Demo,
    pub seed: u64,
    pub success: bool,
}

/// A bad demonstration file: which file, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: field `{field}`: {problem}", file.display())]
pub struct DemoFileError {
    pub file: PathBuf,
    /// Dotted path of the field, e.g. `trajectory.positions[3][1]`; `(file)` for the whole file.
    pub field: String,
    pub problem: String,
}

/// Result of replaying one demonstration file through the environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// Largest absolute difference between a recorded and a replayed position component.
    pub position_drift: f32,
    pub velocity_drift: f32,
    /// Success of the replayed trajectory under the task's rule.
    pub success: bool,
}

/// A task's demonstration file format (one episode per `*.json` file).
pub trait DemoFiles: Sync {
    fn read(&self, path: &Path) -> Result<Demo, DemoFileError>;
    fn write(&self, path: &Path, recorded: &RecordedDemo) -> Result<()>;
    /// Replays a file's actions from its initial state and compares the states.
    fn replay(&self, path: &Path) -> Result<Replay, String>;
}

/// Runs the task's expert in one episode per seed (all in one batch) and records everything.
pub fn record_demos(task: &dyn Task, seeds: &[u64]) -> Result<Vec<RecordedDemo>> {
    let info = task.info();
    let mut episodes = task.reset(seeds);
    let mut expert = task.expert(seeds);
    let mut demos: Vec<Demo> = (0..seeds.len())
        .map(|_| Demo {
            observations: Vec::with_capacity(info.episode_steps + 1),
            actions: Vec::with_capacity(info.episode_steps),
        })
        .collect();
    let mut actions = vec![0.0f32; seeds.len() * info.action_dim];
    loop {
        let observations = episodes.observations();
        for (demo, obs) in demos.iter_mut().zip(observations.chunks(info.obs_dim)) {
            demo.observations.push(obs.to_vec());
        }
        if episodes.is_done() {
            break;
        }
        expert.act(&observations, &mut actions);
        episodes.step(&actions)?;
        for (demo, action) in demos.iter_mut().zip(actions.chunks(info.action_dim)) {
            demo.actions.push(action.to_vec());
        }
    }
    Ok(demos
        .into_iter()
        .zip(episodes.outcomes())
        .zip(seeds)
        .map(|((demo, outcome), &seed)| RecordedDemo {
            demo,
            seed,
            success: outcome.success,
        })
        .collect())
}

/// The `*.json` files of a demonstration folder, sorted by name.
pub fn demo_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("reading demo folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    if files.is_empty() {
        bail!("demo folder {} holds no .json files", dir.display());
    }
    files.sort();
    Ok(files)
}

/// File name of episode `index` in a generated folder.
pub fn demo_file_name(index: usize) -> String {
    format!("traj_{index:06}.json")
}

/// Every demo of a folder, or an error that lists each bad file.
pub fn read_demo_dir(format: &dyn DemoFiles, dir: &Path) -> Result<Vec<Demo>> {
    let files = demo_files(dir)?;
    let read: Vec<Result<Demo, DemoFileError>> = files.par_iter().map(|f| format.read(f)).collect();
    let bad: Vec<String> = read
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{} of {} demo files are invalid (run `ebmlab data validate {}`):\n  {}",
            bad.len(),
            files.len(),
            dir.display(),
            bad.join("\n  ")
        );
    }
    Ok(read.into_iter().filter_map(Result::ok).collect())
}

/// Writes demos as `traj_NNNNNN.json` in `out` (created if missing), numbered from `first_index`.
pub fn write_demos(
    format: &dyn DemoFiles,
    out: &Path,
    first_index: usize,
    demos: &[RecordedDemo],
) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    demos.par_iter().enumerate().try_for_each(|(i, recorded)| {
        format.write(&out.join(demo_file_name(first_index + i)), recorded)
    })
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

/// Replays every demo file of `dir` and collects all problems.
pub fn validate_dir(
    format: &dyn DemoFiles,
    dir: &Path,
    tolerance: f32,
) -> Result<ValidationReport> {
    let files = demo_files(dir)?;
    let results: Vec<(PathBuf, Result<Replay, String>)> = files
        .par_iter()
        .map(|file| (file.clone(), format.replay(file)))
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
