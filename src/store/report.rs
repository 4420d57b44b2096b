//! What reports read: an experiment's trials, evaluations and metric curves, and the
//! published baselines.

use anyhow::Result;
use sqlx::Row;

use super::Store;

/// A trial as a report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportTrial {
    pub experiment: String,
    pub id: String,
    pub overrides_json: String,
    pub config_json: String,
    pub status: String,
    pub step: i64,
    pub iterations: i64,
    pub error: Option<String>,
}

/// One evaluation of one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportEvaluation {
    pub trial: String,
    pub step: i64,
    pub episodes: i64,
    pub successes: i64,
    pub success_rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// One logged value of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub trial: String,
    pub name: String,
    pub step: i64,
    pub value: f64,
}

/// A published number (the `baselines` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub source: String,
    pub task: String,
    pub n_dim: i64,
    pub method: String,
    pub variant: Option<String>,
    pub steps: Option<i64>,
    pub episodes: Option<i64>,
    pub success_rate: Option<f64>,
    pub note: String,
}

impl Store {
    pub async fn report_trials(&self, experiment: &str) -> Result<Vec<ReportTrial>> {
        let rows = sqlx::query(
            "SELECT experiment, id, overrides, config, status, step, iterations, error \
             FROM trials WHERE experiment = ? ORDER BY overrides, id",
        )
        .bind(experiment)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportTrial {
                    experiment: r.try_get("experiment")?,
                    id: r.try_get("id")?,
                    overrides_json: r.try_get("overrides")?,
                    config_json: r.try_get("config")?,
                    status: r.try_get("status")?,
                    step: r.try_get("step")?,
                    iterations: r.try_get("iterations")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    pub async fn report_evaluations(&self, experiment: &str) -> Result<Vec<ReportEvaluation>> {
        let rows = sqlx::query(
            "SELECT trial, step, episodes, successes, success_rate, ci_low, ci_high \
             FROM evaluations WHERE experiment = ? ORDER BY trial, step",
        )
        .bind(experiment)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportEvaluation {
                    trial: r.try_get("trial")?,
                    step: r.try_get("step")?,
                    episodes: r.try_get("episodes")?,
                    successes: r.try_get("successes")?,
                    success_rate: r.try_get("success_rate")?,
                    ci_low: r.try_get("ci_low")?,
                    ci_high: r.try_get("ci_high")?,
                })
            })
            .collect()
    }

    /// The logged values of the named metrics, by trial and step.
    pub async fn report_curves(&self, experiment: &str, names: &[&str]) -> Result<Vec<CurvePoint>> {
        let mut points = Vec::new();
        for name in names {
            let rows = sqlx::query(
                "SELECT trial, step, value FROM metrics WHERE experiment = ? AND name = ? \
                 ORDER BY trial, step",
            )
            .bind(experiment)
            .bind(name)
            .fetch_all(self.pool())
            .await?;
            for r in &rows {
                points.push(CurvePoint {
                    trial: r.try_get("trial")?,
                    name: (*name).to_owned(),
                    step: r.try_get("step")?,
                    value: r.try_get("value")?,
                });
            }
        }
        Ok(points)
    }

    pub async fn baselines(&self) -> Result<Vec<Baseline>> {
        let rows = sqlx::query(
            "SELECT source, task, n_dim, method, variant, steps, episodes, success_rate, note \
             FROM baselines ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Baseline {
                    source: r.try_get("source")?,
                    task: r.try_get("task")?,
                    n_dim: r.try_get("n_dim")?,
                    method: r.try_get("method")?,
                    variant: r.try_get("variant")?,
                    steps: r.try_get("steps")?,
                    episodes: r.try_get("episodes")?,
                    success_rate: r.try_get("success_rate")?,
                    note: r.try_get("note")?,
                })
            })
            .collect()
    }
}

impl Store {
    /// Path and sha256 of a trial's checkpoint at `step`.
    pub async fn checkpoint_file(
        &self,
        experiment: &str,
        trial: &str,
        step: i64,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT path, sha256 FROM checkpoints WHERE experiment = ? AND trial = ? AND step = ?",
        )
        .bind(experiment)
        .bind(trial)
        .bind(step)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get("path")?, r.try_get("sha256")?)))
            .transpose()
    }
}
