//! Experiment, trial, checkpoint and evaluation rows.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Store;

/// Trial states, as stored (`trials.status`, text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::str::FromStr for TrialStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            TrialStatus::Pending,
            TrialStatus::Running,
            TrialStatus::Completed,
            TrialStatus::Failed,
            TrialStatus::Killed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("`{text}` is not a trial status"))
    }
}

/// Stored as its text, in any database sqlx speaks.
impl<DB: sqlx::Database> sqlx::Type<DB> for TrialStatus
where
    String: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for TrialStatus
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(<String as sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
    }
}

impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for TrialStatus
where
    &'q str: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut DB::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&'q str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
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

/// What recording a trial does to one already known: it keeps its status and rows either
/// way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownTrial {
    /// Its config too: a worker recording the trial it was handed (its config, with the
    /// slot's device and threads, is not the run's).
    Kept,
    /// It takes this config unless it is running: a run planning it. The configs can
    /// differ only where the id leaves them free (where it runs: `resources`, `slurm`;
    /// plots), and a run that resumes it with `--set resources.slots_per_gpu=...` means its
    /// own, not the first run's. (A trial whose Slurm job is still queued takes it too: the
    /// job keeps its trials, slots and threads; only such settings as CUDA graphs follow.)
    TakesConfig,
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
            "INSERT INTO experiments (name, spec_path, created_at) VALUES ($1, $2, $3) \
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

    /// Records a trial as pending; what happens to one already known is `known`'s.
    pub async fn add_trial(
        &self,
        experiment: &str,
        id: &str,
        overrides_json: &str,
        config_json: &str,
        iterations: u64,
        known: KnownTrial,
    ) -> Result<()> {
        let on_conflict = match known {
            KnownTrial::Kept => "DO NOTHING",
            KnownTrial::TakesConfig => {
                "DO UPDATE SET config = excluded.config WHERE trials.status <> 'running'"
            }
        };
        sqlx::query(&format!(
            "INSERT INTO trials (experiment, id, overrides, config, status, iterations) \
             VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (experiment, id) {on_conflict}"
        ))
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
            "UPDATE trials SET status = 'running', attempt = attempt + 1, pid = $1, host = $2, \
             device = $3, pack = $4, started_at = $5, heartbeat_at = $6, finished_at = NULL, \
             error = NULL WHERE experiment = $7 AND id = $8",
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

    /// The backend's job that runs (or will run) these trials, e.g. a Slurm job id.
    pub async fn record_backend_job(
        &self,
        experiment: &str,
        trials: &[String],
        backend_job: &str,
    ) -> Result<()> {
        for trial in trials {
            sqlx::query("UPDATE trials SET backend_job = $1 WHERE experiment = $2 AND id = $3")
                .bind(backend_job)
                .bind(experiment)
                .bind(trial)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// The trial is alive at `step` (0: no step yet, the recorded one stays).
    pub async fn heartbeat(&self, experiment: &str, id: &str, step: u64) -> Result<()> {
        sqlx::query(
            "UPDATE trials SET heartbeat_at = $1, step = CASE WHEN $2 > 0 THEN $3 ELSE step END \
             WHERE experiment = $4 AND id = $5 AND status = 'running'",
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
            "UPDATE trials SET status = $1, error = $2, finished_at = $3, pid = NULL \
             WHERE experiment = $4 AND id = $5{condition}"
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
            "SELECT sha256 FROM checkpoints WHERE experiment = $1 AND trial = $2 AND step = $3",
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
            "SELECT c.step FROM checkpoints c WHERE c.experiment = $1 AND c.trial = $2 \
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
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (experiment, trial, step) DO UPDATE \
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
                "SELECT id FROM evaluations WHERE experiment = $1 AND trial = $2 AND step = $3",
            )
            .bind(experiment)
            .bind(trial)
            .bind(summary.step as i64)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(old) = old {
                sqlx::query("DELETE FROM episodes WHERE evaluation = $1")
                    .bind(old)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM evaluations WHERE id = $1")
                    .bind(old)
                    .execute(&mut *conn)
                    .await?;
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO evaluations (experiment, trial, step, episodes, successes, success_rate, \
                 ci_low, ci_high, mean_min_distance_first_goal, mean_min_distance_second_goal, \
                 wall_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
            for (chunk_index, chunk) in episodes.chunks(super::ROWS_PER_STATEMENT).enumerate() {
                let sql = format!(
                    "INSERT INTO episodes (evaluation, idx, seed, success, steps, \
                     min_distance_first_goal, min_distance_second_goal, \
                     final_distance_first_goal, final_distance_second_goal) VALUES {}",
                    super::placeholders(chunk.len(), 9)
                );
                let mut args = sqlx::any::AnyArguments::default();
                for (i, e) in chunk.iter().enumerate() {
                    let idx = (chunk_index * super::ROWS_PER_STATEMENT + i) as i64;
                    bind_all!(
                        args,
                        id,
                        idx,
                        e.seed.to_string(),
                        i64::from(e.success),
                        e.steps as i64,
                        e.min_distance_first_goal,
                        e.min_distance_second_goal,
                        e.final_distance_first_goal,
                        e.final_distance_second_goal
                    );
                }
                sqlx::query_with(&sql, args).execute(&mut *conn).await?;
            }
            Ok(id)
        })
        .await
    }
}
