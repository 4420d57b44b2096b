//! Particle demonstrations as JSON files, one episode per file, in the seed spec's format:
//! `trajectory.positions`, `trajectory.velocities`, `actions`, `first_goal_position`,
//! `second_goal_position`. For T actions a file holds T + 1 states (the initial state and
//! the state after each action); files with T states are read too. Unknown fields are
//! ignored on read.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::ParticleState;
use crate::task::demos::{Demo, DemoFileError};

/// One demonstrated particle episode.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticleDemo {
    /// Episode seed, where the file records one.
    pub seed: Option<u64>,
    /// Positions: the initial one, then one after each action (or one per action).
    pub positions: Vec<Vec<f32>>,
    pub velocities: Vec<Vec<f32>>,
    pub actions: Vec<Vec<f32>>,
    pub first_goal: Vec<f32>,
    pub second_goal: Vec<f32>,
    /// Demonstrated with the multimodal oracle (random goal order).
    pub multimodal: bool,
}

impl ParticleDemo {
    pub fn n_dim(&self) -> usize {
        self.first_goal.len()
    }

    /// The state before action `t`.
    pub fn state(&self, t: usize) -> ParticleState {
        ParticleState {
            position: self.positions[t].clone(),
            velocity: self.velocities[t].clone(),
            first_goal: self.first_goal.clone(),
            second_goal: self.second_goal.clone(),
        }
    }

    /// The observation vector `[p, v, g1, g2]` at step `t`.
    pub fn observation(&self, t: usize) -> Vec<f32> {
        let mut obs = Vec::with_capacity(4 * self.n_dim());
        obs.extend_from_slice(&self.positions[t]);
        obs.extend_from_slice(&self.velocities[t]);
        obs.extend_from_slice(&self.first_goal);
        obs.extend_from_slice(&self.second_goal);
        obs
    }

    /// What a policy learns from: observations and actions.
    pub fn to_demo(&self) -> Demo {
        Demo {
            observations: (0..self.positions.len())
                .map(|t| self.observation(t))
                .collect(),
            actions: self.actions.clone(),
        }
    }

    /// The particle episode behind a demo's observations `[p, v, g1, g2]`.
    pub fn from_demo(demo: &Demo, seed: Option<u64>, multimodal: bool) -> Self {
        let n = demo.actions.first().map_or(0, Vec::len);
        let part = |k: usize| -> Vec<Vec<f32>> {
            demo.observations
                .iter()
                .map(|o| o[k * n..(k + 1) * n].to_vec())
                .collect()
        };
        let first = &demo.observations[0];
        Self {
            seed,
            positions: part(0),
            velocities: part(1),
            actions: demo.actions.clone(),
            first_goal: first[2 * n..3 * n].to_vec(),
            second_goal: first[3 * n..4 * n].to_vec(),
            multimodal,
        }
    }
}

/// The file layout, field order as in the seed spec plus our own extra fields.
#[derive(Serialize, Deserialize)]
struct DemoRecord<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    trajectory: TrajectoryRecord<T>,
    actions: Vec<Vec<T>>,
    first_goal_position: Vec<T>,
    second_goal_position: Vec<T>,
    #[serde(default)]
    multimodal: bool,
    /// Whether the episode succeeded when it was recorded (informative; not read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
}

#[derive(Serialize, Deserialize)]
struct TrajectoryRecord<T> {
    positions: Vec<Vec<T>>,
    velocities: Vec<Vec<T>>,
}

/// Writes `demo` to `path`; `success` is stored as an informative extra field.
pub fn write_demo(path: &Path, demo: &ParticleDemo, success: Option<bool>) -> Result<()> {
    let record = DemoRecord {
        seed: demo.seed,
        trajectory: TrajectoryRecord {
            positions: demo.positions.clone(),
            velocities: demo.velocities.clone(),
        },
        actions: demo.actions.clone(),
        first_goal_position: demo.first_goal.clone(),
        second_goal_position: demo.second_goal.clone(),
        multimodal: demo.multimodal,
        success,
    };
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let written: Result<()> = (|| {
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    })();
    written.with_context(|| format!("writing {}", path.display()))
}

/// Reads and checks one demonstration file.
pub fn read_demo(path: &Path) -> Result<ParticleDemo, DemoFileError> {
    let text = fs::read_to_string(path).map_err(|e| DemoFileError {
        file: path.to_owned(),
        field: "(file)".into(),
        problem: format!("cannot be read: {e}"),
    })?;
    parse_demo(path, &text)
}

/// Parses and checks the text of a demonstration file; `path` only names it in errors.
pub fn parse_demo(path: &Path, text: &str) -> Result<ParticleDemo, DemoFileError> {
    let err = |field: &str, problem: String| DemoFileError {
        file: path.to_owned(),
        field: field.to_owned(),
        problem,
    };
    let mut json = serde_json::Deserializer::from_str(text);
    let record: DemoRecord<f64> = match serde_path_to_error::deserialize(&mut json) {
        Ok(record) => record,
        Err(strict) => {
            // Python's json module writes NaN and Infinity, which JSON does not allow.
            // JSON5 reads them, so the checks below can name the non-finite field.
            match json5::from_str::<DemoRecord<f64>>(text) {
                Ok(record) if !all_finite(&record) => record,
                _ => return Err(describe_parse_error(path, strict)),
            }
        }
    };
    check_record(record).map_err(|(field, problem)| err(&field, problem))
}

fn describe_parse_error(
    path: &Path,
    error: serde_path_to_error::Error<serde_json::Error>,
) -> DemoFileError {
    let inner = error.inner();
    let parent = match error.path().to_string() {
        root if root == "." => None,
        path => Some(path),
    };
    let message = inner.to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let (field, problem) = if inner.is_syntax() || inner.is_eof() {
        ("(file)".to_owned(), format!("not valid JSON: {inner}"))
    } else if let Some(name) = missing {
        let field = match parent {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_owned(),
        };
        (field, "is missing".to_owned())
    } else {
        (parent.unwrap_or_else(|| "(file)".to_owned()), message)
    };
    DemoFileError {
        file: path.to_owned(),
        field,
        problem,
    }
}

fn all_finite(record: &DemoRecord<f64>) -> bool {
    let rows = |rows: &Vec<Vec<f64>>| rows.iter().flatten().all(|x| x.is_finite());
    rows(&record.trajectory.positions)
        && rows(&record.trajectory.velocities)
        && rows(&record.actions)
        && record.first_goal_position.iter().all(|x| x.is_finite())
        && record.second_goal_position.iter().all(|x| x.is_finite())
}

type FieldProblem = (String, String);

/// Checks lengths, dimensions and finiteness, and converts to `f32`.
fn check_record(record: DemoRecord<f64>) -> Result<ParticleDemo, FieldProblem> {
    let n = record.first_goal_position.len();
    if n == 0 {
        return Err(("first_goal_position".into(), "is empty".into()));
    }
    let first_goal = check_vector("first_goal_position", &record.first_goal_position, n)?;
    let second_goal = check_vector("second_goal_position", &record.second_goal_position, n)?;
    let actions = check_rows("actions", &record.actions, n)?;
    let positions = check_rows("trajectory.positions", &record.trajectory.positions, n)?;
    let velocities = check_rows("trajectory.velocities", &record.trajectory.velocities, n)?;

    let t = actions.len();
    if t == 0 {
        return Err(("actions".into(), "is empty".into()));
    }
    if positions.len() != t + 1 && positions.len() != t {
        return Err((
            "trajectory.positions".into(),
            format!(
                "has {} states for {t} actions; expected {} (initial state plus one per action) or {t}",
                positions.len(),
                t + 1
            ),
        ));
    }
    if velocities.len() != positions.len() {
        return Err((
            "trajectory.velocities".into(),
            format!(
                "has {} states but trajectory.positions has {}",
                velocities.len(),
                positions.len()
            ),
        ));
    }
    Ok(ParticleDemo {
        seed: record.seed,
        positions,
        velocities,
        actions,
        first_goal,
        second_goal,
        multimodal: record.multimodal,
    })
}

fn check_rows(field: &str, rows: &[Vec<f64>], n: usize) -> Result<Vec<Vec<f32>>, FieldProblem> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| check_vector(&format!("{field}[{i}]"), row, n))
        .collect()
}

fn check_vector(field: &str, values: &[f64], n: usize) -> Result<Vec<f32>, FieldProblem> {
    if values.len() != n {
        return Err((
            field.to_owned(),
            format!(
                "has {} values, expected {n} (the dimension of first_goal_position)",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let narrowed = x as f32;
            if x.is_nan() {
                Err((format!("{field}[{i}]"), "is NaN".to_owned()))
            } else if !narrowed.is_finite() {
                Err((
                    format!("{field}[{i}]"),
                    format!("is not a finite float32 ({x})"),
                ))
            } else {
                Ok(narrowed)
            }
        })
        .collect()
}
