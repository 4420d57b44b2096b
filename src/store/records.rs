//! Experiment, trial, checkpoint and evaluation rows.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;

use super::Store;

/// Trial states, as stored (`trials.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, Serialize, Deserialize)]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Killed,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Pending => "pending",
            TrialStatus::Running => "running",
            TrialStatus::Completed => "completed",
            TrialStatus::Failed => "failed",
            TrialStatus::Killed => "killed",
        }
    }
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An evaluation to record: one checkpoint's success rate and mean goal distances.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvaluation {
    pub step: u64,
    /// Episodes run, and how many succeeded.
    pub counts: (usize, usize),
    /// Success rate and its 95% interval: (rate, low, high).
    pub rate: (f64, f64, f64),
    /// Mean over episodes of the smallest distance to the first and the second goal.
    pub mean_min_distances: [f64; 2],
    pub wall_seconds: f64,
}

/// One episode of an evaluation to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEpisode {
    pub seed: u64,
    pub success: bool,
    pub steps: usize,
    pub min_distance_first_goal: f64,
    pub min_distance_second_goal: f64,
    pub final_distance_first_goal: f64,
    pub final_distance_second_goal: f64,
}

/// This machine's name, as recorded beside a running trial's pid.
pub fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_owned(),
        _ => "localhost".into(),
    }
}

/// Which trials [`Store::end_trial`] may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndWhen {
    /// Whatever its state (its own process records its end).
    Always,
    /// Only one still `running`: a worker that died without recording its end.
    Running,
    /// Only one not already `completed` or `failed` (which its worker recorded).
    Unfinished,
}

/// Current UTC time as ISO-8601 text (portable between SQLite and PostgreSQL).
pub fn now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl Store {
    pub async fn upsert_experiment(&self, name: &str, spec_path: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO experiments (name, spec_path, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET spec_path = excluded.spec_path",
        )
        .bind(name)
        .bind(spec_path)
        .bind(now())
        .execute(self.pool())
        .await
        .context("recording the experiment")?;
        Ok(())
    }

    /// Records a trial as pending unless it is already known.
    pub async fn add_trial(
        &self,
        experiment: &str,
        id: &str,
        overrides_json: &str,
        config_json: &str,
        iterations: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO trials (experiment, id, overrides, config, status, iterations) \
             VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (experiment, id) DO NOTHING",
        )
        .bind(experiment)
        .bind(id)
        .bind(overrides_json)
        .bind(config_json)
        .bind(iterations as i64)
        .execute(self.pool())
        .await
        .context("recording the trial")?;
        Ok(())
    }

    /// Marks a trial running in this process (one more attempt), on `device`, in `pack`
    /// (`None`: alone).
    pub async fn start_trial(
        &self,
        experiment: &str,
        id: &str,
        device: &str,
        pack: Option<&str>,
    ) -> Result<()> {
        let host = hostname();
        let now = now();
        sqlx::query(
            "UPDATE trials SET status = 'running', attempt = attempt + 1, pid = ?, host = ?, \
             device = ?, pack = ?, started_at = ?, heartbeat_at = ?, finished_at = NULL, \
             error = NULL WHERE experiment = ? AND id = ?",
        )
        .bind(std::process::id() as i64)
        .bind(host)
        .bind(device)
        .bind(pack)
        .bind(&now)
        .bind(&now)
        .bind(experiment)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The trial is alive at `step` (0: no step yet, the recorded one stays).
    pub async fn heartbeat(&self, experiment: &str, id: &str, step: u64) -> Result<()> {
        sqlx::query(
            "UPDATE trials SET heartbeat_at = ?, step = CASE WHEN ? > 0 THEN ? ELSE step END \
             WHERE experiment = ? AND id = ? AND status = 'running'",
        )
        .bind(now())
        .bind(step as i64)
        .bind(step as i64)
        .bind(experiment)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Ends a trial with `status` (and the reason) if it is in a state `when` allows;
    /// returns whether it was.
    pub async fn end_trial(
        &self,
        experiment: &str,
        id: &str,
        status: TrialStatus,
        error: Option<&str>,
        when: EndWhen,
    ) -> Result<bool> {
        let condition = match when {
            EndWhen::Always => "",
            EndWhen::Running => " AND status = 'running'",
            EndWhen::Unfinished => " AND status NOT IN ('completed', 'failed')",
        };
        let done = sqlx::query(&format!(
            "UPDATE trials SET status = ?, error = ?, finished_at = ?, pid = NULL \
             WHERE experiment = ? AND id = ?{condition}"
        ))
        .bind(status)
        .bind(error)
        .bind(now())
        .bind(experiment)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The sha256 recorded for a trial's checkpoint at `step`.
    pub async fn checkpoint_sha256(
        &self,
        experiment: &str,
        trial: &str,
        step: u64,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT sha256 FROM checkpoints WHERE experiment = ? AND trial = ? AND step = ?",
        )
        .bind(experiment)
        .bind(trial)
        .bind(step as i64)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Steps of a trial's recorded checkpoints that have no evaluation yet.
    pub async fn unevaluated_checkpoints(&self, experiment: &str, trial: &str) -> Result<Vec<u64>> {
        let steps: Vec<i64> = sqlx::query_scalar(
            "SELECT c.step FROM checkpoints c WHERE c.experiment = ? AND c.trial = ? \
             AND NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.experiment = c.experiment \
             AND e.trial = c.trial AND e.step = c.step) ORDER BY c.step",
        )
        .bind(experiment)
        .bind(trial)
        .fetch_all(self.pool())
        .await?;
        Ok(steps.into_iter().map(|s| s as u64).collect())
    }

    pub async fn add_checkpoint(
        &self,
        experiment: &str,
        trial: &str,
        step: u64,
        path: &str,
        sha256: &str,
        bytes: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (experiment, trial, step, path, sha256, bytes, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (experiment, trial, step) DO UPDATE \
             SET path = excluded.path, sha256 = excluded.sha256, bytes = excluded.bytes",
        )
        .bind(experiment)
        .bind(trial)
        .bind(step as i64)
        .bind(path)
        .bind(sha256)
        .bind(bytes as i64)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records an evaluation (replacing one of the same step) and its episodes.
    pub async fn add_evaluation(
        &self,
        experiment: &str,
        trial: &str,
        summary: &NewEvaluation,
        episodes: &[NewEpisode],
    ) -> Result<i64> {
        self.write(async |conn| {
            let old: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM evaluations WHERE experiment = ? AND trial = ? AND step = ?",
            )
            .bind(experiment)
            .bind(trial)
            .bind(summary.step as i64)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(old) = old {
                sqlx::query("DELETE FROM episodes WHERE evaluation = ?")
                    .bind(old)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM evaluations WHERE id = ?")
                    .bind(old)
                    .execute(&mut *conn)
                    .await?;
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO evaluations (experiment, trial, step, episodes, successes, success_rate, \
                 ci_low, ci_high, mean_min_distance_first_goal, mean_min_distance_second_goal, \
                 wall_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(experiment)
            .bind(trial)
            .bind(summary.step as i64)
            .bind(summary.counts.0 as i64)
            .bind(summary.counts.1 as i64)
            .bind(summary.rate.0)
            .bind(summary.rate.1)
            .bind(summary.rate.2)
            .bind(summary.mean_min_distances[0])
            .bind(summary.mean_min_distances[1])
            .bind(summary.wall_seconds)
            .fetch_one(&mut *conn)
            .await?;
            for (chunk_index, chunk) in episodes.chunks(500).enumerate() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO episodes (evaluation, idx, seed, success, steps, \
                     min_distance_first_goal, min_distance_second_goal, \
                     final_distance_first_goal, final_distance_second_goal) ",
                );
                insert.push_values(chunk.iter().enumerate(), |mut b, (i, e)| {
                    b.push_bind(id)
                        .push_bind((chunk_index * 500 + i) as i64)
                        .push_bind(e.seed.to_string())
                        .push_bind(e.success)
                        .push_bind(e.steps as i64)
                        .push_bind(e.min_distance_first_goal)
                        .push_bind(e.min_distance_second_goal)
                        .push_bind(e.final_distance_first_goal)
                        .push_bind(e.final_distance_second_goal);
                });
                insert.build().execute(&mut *conn).await?;
            }
            Ok(id)
        })
        .await
    }
}
