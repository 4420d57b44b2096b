//! The results store: the only code that speaks SQL. SQLite through sqlx (WAL, a busy
//! timeout, short `BEGIN IMMEDIATE` write transactions, batched rows), schema from the
//! top-level `migrations/` applied on open. The SQL is kept portable for PostgreSQL.
//!
//! A leaf: it knows rows, not trials, policies or specs; the code that runs trials turns
//! what they produce into rows ([`NewEvaluation`], [`MetricRow`], ...).

mod query;
mod records;
mod report;
mod status;

pub use records::{hostname, now, EndWhen, NewEpisode, NewEvaluation, TrialStatus};
pub use report::{Baseline, CurvePoint, ReportEvaluation, ReportTrial};
pub use status::{parse_timestamp, RunningTrial, StoredTrial, TrialStatusRow};

pub use query::QueryResult;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

/// Default database file, beside the runs.
pub const DEFAULT_DB: &str = "runs/ebmlab.sqlite";
/// How long a writer waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per INSERT statement (SQLite allows 32,766 bound values).
const ROWS_PER_STATEMENT: usize = 500;

/// One metric value of one trial at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub experiment: String,
    pub trial: String,
    pub step: i64,
    pub name: String,
    pub value: f64,
    pub wall_time: f64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("opening results database {}", path.display()))?;
        probe(&pool, path).await?;
        // Migrations only add: a database already migrated by a newer ebmlab stays usable.
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("migrating {}", path.display()))?;
        Ok(Self {
            pool,
            path: path.to_owned(),
        })
    }

    /// Opens an existing database for reading only: every write is refused by SQLite.
    pub async fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            anyhow::bail!("no results database at {}", path.display());
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("query_only", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening results database {}", path.display()))?;
        probe(&pool, path).await?;
        Ok(Self {
            pool,
            path: path.to_owned(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs `work` in one short write transaction that takes the write lock up front
    /// (`BEGIN IMMEDIATE`): concurrent writers wait in turn (busy timeout) instead of
    /// failing on a lock upgrade.
    pub async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        match work(&mut conn).await {
            Ok(value) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(value)
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(e.context(format!("writing to {}", self.path.display())))
            }
        }
    }

    /// Writes metric rows in one transaction and refreshes `metrics_latest`. Rows already
    /// present for the same trial, step and name are replaced.
    pub async fn insert_metrics(&self, rows: &[MetricRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(async |conn| {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO metrics (experiment, trial, step, name, value, wall_time) ",
                );
                insert.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.experiment)
                        .push_bind(&r.trial)
                        .push_bind(r.step)
                        .push_bind(&r.name)
                        .push_bind(r.value)
                        .push_bind(r.wall_time);
                });
                insert.push(
                    " ON CONFLICT (experiment, trial, step, name) \
                     DO UPDATE SET value = excluded.value, wall_time = excluded.wall_time",
                );
                insert.build().execute(&mut *conn).await?;

                let mut latest: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO metrics_latest (experiment, trial, name, step, value) ",
                );
                latest.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.experiment)
                        .push_bind(&r.trial)
                        .push_bind(&r.name)
                        .push_bind(r.step)
                        .push_bind(r.value);
                });
                latest.push(
                    " ON CONFLICT (experiment, trial, name) DO UPDATE \
                     SET step = excluded.step, value = excluded.value \
                     WHERE excluded.step >= metrics_latest.step",
                );
                latest.build().execute(&mut *conn).await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs one SQL statement and returns its rows as text (for `ebmlab query`).
    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        query::run(&self.pool, sql, None).await
    }
}

/// Reads the schema once, so that a file that is not a database (or is corrupt) is named
/// here rather than failing the first query anonymously.
async fn probe(pool: &SqlitePool, path: &Path) -> Result<()> {
    sqlx::query("SELECT COUNT(*) FROM sqlite_master")
        .execute(pool)
        .await
        .with_context(|| format!("reading results database {}", path.display()))?;
    Ok(())
}

/// Runs a future to completion on a small runtime (for the synchronous CLI and trial loop).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}
