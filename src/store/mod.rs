//! The results store: the only code that speaks SQL. SQLite (WAL, a busy timeout, short
//! `BEGIN IMMEDIATE` write transactions) or PostgreSQL, through sqlx's `Any` driver; batched
//! rows; the schema from `migrations/<dialect>/`, applied on open.
//!
//! A leaf: it knows rows, not trials, policies or specs; the code that runs trials turns
//! what they produce into rows ([`NewEvaluation`], [`MetricRow`], ...).

/// Adds each value to an argument list, in order.
macro_rules! bind_all {
    ($args:expr, $($value:expr),+ $(,)?) => {
        $( sqlx::Arguments::add(&mut $args, $value).map_err(|e| anyhow::anyhow!(e))?; )+
    };
}

mod location;
mod query;
mod records;
mod report;
mod status;

pub use location::Database;
pub use records::{hostname, now, EndWhen, KnownTrial, NewEpisode, NewEvaluation, TrialStatus};
pub use report::{Baseline, CurvePoint, ReportEvaluation, ReportTrial};
pub use status::{parse_timestamp, RunningTrial, StoredTrial, TrialStatusRow};

pub use query::QueryResult;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};

/// Default database file, beside the runs.
pub const DEFAULT_DB: &str = "runs/ebmlab.sqlite";
/// How long a SQLite writer waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per INSERT statement (SQLite allows 32,766 bound values, PostgreSQL 65,535).
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

/// The results store on SQLite or PostgreSQL. Every statement is written once, in SQL both
/// take (`$N` parameters, `ON CONFLICT` upserts, `RETURNING`, text timestamps, 64-bit
/// columns); what differs (how a write transaction begins, the schema's types) is chosen
/// here and in `migrations/<dialect>/`.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    db: Database,
}

impl Store {
    /// Opens (creating a SQLite file if needed) the database and brings its schema up to
    /// date.
    pub async fn open(db: &Database) -> Result<Self> {
        if let Database::Sqlite(path) = db {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let store = Self::connect(db, false, 4).await?;
        // Migrations only add: a database already migrated by a newer ebmlab stays usable.
        let mut migrator = match db {
            Database::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Database::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.set_ignore_missing(true);
        migrator
            .run(&store.pool)
            .await
            .with_context(|| format!("migrating {db}"))?;
        Ok(store)
    }

    /// Opens an existing database for reading (SQLite opens the file read-only; on
    /// PostgreSQL, `query` runs in a read-only transaction).
    pub async fn open_read_only(db: &Database) -> Result<Self> {
        if let Database::Sqlite(path) = db {
            if !path.exists() {
                anyhow::bail!("no results database at {}", path.display());
            }
        }
        Self::connect(db, true, 1).await
    }

    async fn connect(db: &Database, read_only: bool, connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = !db.is_postgres();
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        configure_sqlite(conn, read_only).await?;
                    }
                    Ok(())
                })
            })
            .connect(&db.url(if read_only { "ro" } else { "rwc" }))
            .await
            .with_context(|| format!("opening results database {db}"))?;
        // Read the schema once, so that a file that is not a database (or is corrupt) is
        // named here rather than failing the first query anonymously.
        let probe = match db {
            Database::Sqlite(_) => "SELECT COUNT(*) FROM sqlite_master",
            Database::Postgres(_) => "SELECT COUNT(*) FROM information_schema.tables",
        };
        pool.execute(probe)
            .await
            .with_context(|| format!("reading results database {db}"))?;
        Ok(Self {
            pool,
            db: db.clone(),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs `work` in one short write transaction. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`), so concurrent writers wait in turn (busy timeout) instead
    /// of failing on a lock upgrade; PostgreSQL's row locks need no such care.
    pub async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.pool.acquire().await?;
        let begin = match self.db {
            Database::Sqlite(_) => "BEGIN IMMEDIATE",
            Database::Postgres(_) => "BEGIN",
        };
        conn.execute(begin).await?;
        match work(&mut conn).await {
            Ok(value) => {
                conn.execute("COMMIT").await?;
                Ok(value)
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e.context(format!("writing to {}", self.db)))
            }
        }
    }

    /// Writes metric rows in one transaction and refreshes `metrics_latest`. Rows already
    /// present for the same trial, step and name are replaced.
    pub async fn insert_metrics(&self, rows: &[MetricRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One row per key and statement: PostgreSQL refuses to upsert a row twice in one.
        let mut unique: BTreeMap<(&str, &str, i64, &str), &MetricRow> = BTreeMap::new();
        let mut latest: BTreeMap<(&str, &str, &str), &MetricRow> = BTreeMap::new();
        for r in rows {
            unique.insert((&r.experiment, &r.trial, r.step, &r.name), r);
            let newest = latest
                .entry((&r.experiment, &r.trial, &r.name))
                .or_insert(r);
            if r.step >= newest.step {
                *newest = r;
            }
        }
        let unique: Vec<&MetricRow> = unique.into_values().collect();
        let latest: Vec<&MetricRow> = latest.into_values().collect();
        self.write(async |conn| {
            for chunk in unique.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO metrics (experiment, trial, step, name, value, wall_time) \
                     VALUES {} ON CONFLICT (experiment, trial, step, name) \
                     DO UPDATE SET value = excluded.value, wall_time = excluded.wall_time",
                    placeholders(chunk.len(), 6)
                );
                let mut args = AnyArguments::default();
                for r in chunk {
                    bind_all!(
                        args,
                        &r.experiment,
                        &r.trial,
                        r.step,
                        &r.name,
                        r.value,
                        r.wall_time
                    );
                }
                sqlx::query_with(&sql, args).execute(&mut *conn).await?;
            }
            for chunk in latest.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO metrics_latest (experiment, trial, name, step, value) \
                     VALUES {} ON CONFLICT (experiment, trial, name) DO UPDATE \
                     SET step = excluded.step, value = excluded.value \
                     WHERE excluded.step >= metrics_latest.step",
                    placeholders(chunk.len(), 5)
                );
                let mut args = AnyArguments::default();
                for r in chunk {
                    bind_all!(args, &r.experiment, &r.trial, &r.name, r.step, r.value);
                }
                sqlx::query_with(&sql, args).execute(&mut *conn).await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs one SQL statement read-only and returns its rows as text (for `ebmlab query`).
    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        query::run(self, sql, None).await
    }
}

/// SQLite's settings for every connection: WAL, a busy timeout, foreign keys; reads only
/// on a read-only connection.
async fn configure_sqlite(conn: &mut AnyConnection, read_only: bool) -> sqlx::Result<()> {
    conn.execute(format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis()).as_str())
        .await?;
    if read_only {
        conn.execute("PRAGMA query_only = ON").await?;
    } else {
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.execute("PRAGMA synchronous = NORMAL").await?;
        conn.execute("PRAGMA foreign_keys = ON").await?;
    }
    let _ = conn.ping().await;
    Ok(())
}

/// `($1, $2, ...), ($k+1, ...)` for `rows` rows of `columns` values.
pub(crate) fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let values: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a future to completion on a small runtime (for the synchronous CLI and trial loop).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}
