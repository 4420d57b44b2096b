//! What reports read: an experiment's trials, evaluations and metric curves, and the
//! published baselines.

use anyhow::Result;

use super::{Store, TrialStatus};

/// A trial as a report needs it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReportTrial {
    pub experiment: String,
    pub id: String,
    #[sqlx(rename = "overrides")]
    pub overrides_json: String,
    #[sqlx(rename = "config")]
    pub config_json: String,
    pub status: TrialStatus,
    pub step: i64,
    pub iterations: i64,
    pub error: Option<String>,
}

/// One evaluation of one checkpoint.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CurvePoint {
    pub trial: String,
    pub name: String,
    pub step: i64,
    pub value: f64,
}

/// A published number (the `baselines` table).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    /// How far off the rate may be where it is read from a plot (`None`: printed).
    pub reading_error: Option<f64>,
}

impl Store {
    pub async fn report_trials(&self, experiment: &str) -> Result<Vec<ReportTrial>> {
        Ok(sqlx::query_as(
            "SELECT experiment, id, overrides, config, status, step, iterations, error \
             FROM trials WHERE experiment = $1 ORDER BY overrides, id",
        )
        .bind(experiment)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn report_evaluations(&self, experiment: &str) -> Result<Vec<ReportEvaluation>> {
        Ok(sqlx::query_as(
            "SELECT trial, step, episodes, successes, success_rate, ci_low, ci_high \
             FROM evaluations WHERE experiment = $1 ORDER BY trial, step",
        )
        .bind(experiment)
        .fetch_all(self.pool())
        .await?)
    }

    /// The logged values of the named metrics, by trial and step.
    pub async fn report_curves(&self, experiment: &str, names: &[&str]) -> Result<Vec<CurvePoint>> {
        let mut points = Vec::new();
        for name in names {
            points.extend(
                sqlx::query_as::<_, CurvePoint>(
                    "SELECT trial, name, step, value FROM metrics \
                     WHERE experiment = $1 AND name = $2 ORDER BY trial, step",
                )
                .bind(experiment)
                .bind(name)
                .fetch_all(self.pool())
                .await?,
            );
        }
        Ok(points)
    }

    pub async fn baselines(&self) -> Result<Vec<Baseline>> {
        Ok(sqlx::query_as(
            "SELECT source, task, n_dim, method, variant, steps, episodes, success_rate, note, \
             reading_error \
             FROM baselines ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?)
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
        Ok(sqlx::query_as(
            "SELECT path, sha256 FROM checkpoints WHERE experiment = $1 AND trial = $2 AND step = $3",
        )
        .bind(experiment)
        .bind(trial)
        .bind(step)
        .fetch_optional(self.pool())
        .await?)
    }
}
