//! What an evaluation reports, and its files.

use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::rollout::EpisodeRecord;
use super::stats::{wilson_interval, Z95};
use crate::plot::{plot_episode, EpisodePlot};
use crate::task::Task;

/// Success rate with its Wilson 95% interval and mean goal distances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Training step of the evaluated weights.
    pub step: u64,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Mean over episodes of the smallest distance to each goal.
    pub mean_min_distance_first_goal: f64,
    pub mean_min_distance_second_goal: f64,
    pub wall_seconds: f64,
}

impl EvalSummary {
    pub fn from_records(step: u64, records: &[EpisodeRecord], wall_seconds: f64) -> Self {
        let n = records.len();
        let successes = records.iter().filter(|r| r.outcome.success).count();
        let (ci_low, ci_high) = wilson_interval(successes, n, Z95);
        let mean = |g: usize| {
            records
                .iter()
                .map(|r| r.outcome.min_goal_distances[g] as f64)
                .sum::<f64>()
                / n.max(1) as f64
        };
        Self {
            step,
            episodes: n,
            successes,
            success_rate: successes as f64 / n.max(1) as f64,
            ci_low,
            ci_high,
            mean_min_distance_first_goal: mean(0),
            mean_min_distance_second_goal: mean(1),
            wall_seconds,
        }
    }
}

/// One CSV row per episode.
pub fn write_episodes_csv(path: &Path, records: &[EpisodeRecord]) -> Result<()> {
    let mut out =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    out.write_record([
        "seed",
        "success",
        "steps",
        "min_distance_first_goal",
        "min_distance_second_goal",
        "final_distance_first_goal",
        "final_distance_second_goal",
    ])?;
    for r in records {
        let o = &r.outcome;
        out.write_record([
            o.seed.to_string(),
            o.success.to_string(),
            o.steps.to_string(),
            o.min_goal_distances[0].to_string(),
            o.min_goal_distances[1].to_string(),
            o.final_goal_distances[0].to_string(),
            o.final_goal_distances[1].to_string(),
        ])?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// One PNG per episode (`episode_NNN.png`): path, setpoints, goals, outcome.
pub fn plot_episodes(dir: &Path, records: &[EpisodeRecord], task: &dyn Task) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    records.par_iter().enumerate().try_for_each(|(i, r)| {
        let title = format!("episode {i} (seed {})", r.outcome.seed);
        plot_episode(
            &dir.join(format!("episode_{i:03}.png")),
            &EpisodePlot {
                title: &title,
                sketch: &task.sketch(&r.observations, &r.actions),
                success: Some(r.outcome.success),
            },
        )
    })
}
