//! What `ebmlab status` lists: one row per trial with its latest numbers.

use anyhow::Result;

use super::{Store, TrialStatus};

/// A trial's state as the store knows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TrialStatusRow {
    pub experiment: String,
    pub id: String,
    pub overrides: String,
    pub status: TrialStatus,
    pub step: i64,
    pub iterations: i64,
    pub device: Option<String>,
    /// The pack it last trained in (`<first trial>+<others>`), if any.
    pub pack: Option<String>,
    /// The backend's job it last ran in (a Slurm job id), if any.
    pub backend_job: Option<String>,
    pub attempt: i64,
    pub heartbeat_at: Option<String>,
    pub error: Option<String>,
    pub loss: Option<f64>,
    pub success_rate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

impl Store {
    /// Every trial (of one experiment, or all), with its latest loss and success rate.
    pub async fn trial_status(&self, experiment: Option<&str>) -> Result<Vec<TrialStatusRow>> {
        let sql =
            "SELECT t.experiment, t.id, t.overrides, t.status, t.iterations, t.device, t.pack, \
             t.backend_job, \
             t.attempt, t.heartbeat_at, t.error, \
             (SELECT CASE WHEN MAX(l.step) > t.step THEN MAX(l.step) ELSE t.step END \
              FROM metrics_latest l WHERE l.experiment = t.experiment AND l.trial = t.id) \
              AS step, \
             (SELECT l.value FROM metrics_latest l WHERE l.experiment = t.experiment \
                 AND l.trial = t.id AND l.name = 'loss') AS loss, \
             e.success_rate, e.ci_low, e.ci_high \
             FROM trials t LEFT JOIN evaluations e ON e.id = ( \
                 SELECT e2.id FROM evaluations e2 WHERE e2.experiment = t.experiment \
                 AND e2.trial = t.id ORDER BY e2.step DESC LIMIT 1) \
             WHERE (CAST($1 AS TEXT) IS NULL OR t.experiment = $1) \
             ORDER BY t.experiment, t.overrides, t.id";
        Ok(sqlx::query_as(sql)
            .bind(experiment)
            .fetch_all(self.pool())
            .await?)
    }
}

/// Seconds since the Unix epoch of a timestamp written by [`super::now`].
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let parsed = parse_timestamp(&super::super::now()).unwrap();
        assert!((parsed - now).abs() < 1.0, "{parsed} vs {now}");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:01.500Z"),
            Some(951_868_801.5)
        );
        assert_eq!(parse_timestamp("garbage"), None);
    }
}

/// A recorded trial with what is needed to run it again.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredTrial {
    pub id: String,
    pub status: TrialStatus,
    pub error: Option<String>,
    #[sqlx(rename = "overrides")]
    pub overrides_json: String,
    #[sqlx(rename = "config")]
    pub config_json: String,
    pub spec_path: Option<String>,
    /// The backend's job it last ran in (a Slurm job id).
    pub backend_job: Option<String>,
}

impl Store {
    /// The trials of `experiment` (only trial `id`, if given), in listing order.
    async fn stored_trials(&self, experiment: &str, id: Option<&str>) -> Result<Vec<StoredTrial>> {
        Ok(sqlx::query_as(
            "SELECT t.id, t.status, t.error, t.overrides, t.config, x.spec_path, t.backend_job \
             FROM trials t \
             JOIN experiments x ON x.name = t.experiment \
             WHERE t.experiment = $1 AND (CAST($2 AS TEXT) IS NULL OR t.id = $2) \
             ORDER BY t.overrides, t.id",
        )
        .bind(experiment)
        .bind(id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The trials of `experiment`, in listing order.
    pub async fn experiment_trials(&self, experiment: &str) -> Result<Vec<StoredTrial>> {
        self.stored_trials(experiment, None).await
    }

    /// One recorded trial.
    pub async fn stored_trial(&self, experiment: &str, id: &str) -> Result<StoredTrial> {
        self.stored_trials(experiment, Some(id))
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no trial {id} of experiment `{experiment}`"))
    }
}

/// A trial recorded as running: where, and when it last gave a sign of life.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunningTrial {
    pub id: String,
    pub pid: Option<i64>,
    pub host: Option<String>,
    pub heartbeat_at: Option<String>,
}

impl Store {
    /// The trials of `experiment` recorded as running.
    pub async fn running_trials(&self, experiment: &str) -> Result<Vec<RunningTrial>> {
        Ok(sqlx::query_as(
            "SELECT id, pid, host, heartbeat_at FROM trials \
             WHERE experiment = $1 AND status = 'running' ORDER BY id",
        )
        .bind(experiment)
        .fetch_all(self.pool())
        .await?)
    }
}
