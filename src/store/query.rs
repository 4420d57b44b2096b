//! Arbitrary read-only SQL, rendered as text cells. On SQLite a statement SQLite judges a
//! write is refused before it runs (and the file is open read-only); on PostgreSQL the
//! statement runs in a read-only transaction, its rows rendered through `row_to_json`.

use std::str::FromStr;

use anyhow::{Context, Result};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{Column, ConnectOptions as _, Connection as _, Executor as _, Row, TypeInfo, ValueRef};

use super::{Database, Store};

/// Column names and rows of a query, every cell as text (`NULL` as empty).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn cell(row: &SqliteRow, i: usize) -> Result<String> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(String::new());
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" | "BOOLEAN" => row.try_get::<i64, _>(i)?.to_string(),
        "REAL" => row.try_get::<f64, _>(i)?.to_string(),
        "BLOB" => format!("<{} bytes>", row.try_get::<Vec<u8>, _>(i)?.len()),
        _ => row.try_get::<String, _>(i)?,
    })
}

/// Whether any statement of `sql` would write (SQLite's own judgement,
/// `sqlite3_stmt_readonly`); a statement that does not prepare is left to run and fail
/// with SQLite's message.
async fn writes(conn: &mut SqliteConnection, sql: &str) -> Result<bool> {
    use libsqlite3_sys as ffi;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let text = std::ffi::CString::new(sql).context("the query holds a NUL byte")?;
    let mut rest = text.as_ptr();
    // SAFETY: `db` is a live connection held locked by `handle`; each statement prepared
    // here is finalized before the next, and `rest` points into `text`, which outlives the
    // loop.
    unsafe {
        while *rest != 0 {
            let mut stmt = std::ptr::null_mut();
            let mut tail = std::ptr::null();
            if ffi::sqlite3_prepare_v2(db, rest, -1, &mut stmt, &mut tail) != ffi::SQLITE_OK {
                return Ok(false);
            }
            if stmt.is_null() {
                break; // only white space or comments were left
            }
            let read_only = ffi::sqlite3_stmt_readonly(stmt) != 0;
            ffi::sqlite3_finalize(stmt);
            if !read_only {
                return Ok(true);
            }
            rest = tail;
        }
    }
    Ok(false)
}

/// Runs one statement (with `$1` bound to `bind`, if given) without letting it write.
pub async fn run(store: &Store, sql: &str, bind: Option<&str>) -> Result<QueryResult> {
    match store.database() {
        Database::Sqlite(_) => run_sqlite(store.database(), sql, bind).await,
        Database::Postgres(url) => run_postgres(url, sql, bind).await,
    }
}

fn refused(sql: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`ebmlab query` is read-only, and this statement would change the database: {sql}"
    )
}

async fn run_sqlite(db: &Database, sql: &str, bind: Option<&str>) -> Result<QueryResult> {
    let mut conn = SqliteConnectOptions::from_str(&db.url("ro"))?
        .read_only(true)
        .pragma("query_only", "ON")
        .connect()
        .await
        .with_context(|| format!("opening results database {db}"))?;
    if writes(&mut conn, sql).await? {
        return Err(refused(sql));
    }
    let mut query = sqlx::query(sql);
    if let Some(value) = bind {
        query = query.bind(value);
    }
    let rows = query
        .fetch_all(&mut conn)
        .await
        .with_context(|| format!("query failed: {sql}"))?;
    // Column names come from the statement, so an empty result still has its header.
    let columns = match rows.first() {
        Some(r) => r.columns().iter().map(|c| c.name().to_owned()).collect(),
        None => {
            let described = conn.describe(sql).await?;
            described
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect()
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(
            (0..row.len())
                .map(|i| cell(row, i))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    Ok(QueryResult { columns, rows: out })
}

/// PostgreSQL: the statement in a read-only transaction, over the simple query protocol,
/// whose rows come as text whatever their types (numeric, arrays, intervals included).
async fn run_postgres(url: &str, sql: &str, bind: Option<&str>) -> Result<QueryResult> {
    use sqlx::postgres::PgValueRef;
    let db: Database = url.parse()?;
    // A bound value is written into the statement as a quoted literal: the simple
    // protocol takes no parameters.
    let statement = match bind {
        Some(value) => sql.replace("$1", &format!("'{}'", value.replace('\'', "''"))),
        None => sql.to_owned(),
    };
    let mut conn = PgConnection::connect(url)
        .await
        .with_context(|| format!("opening results database {db}"))?;
    conn.execute("BEGIN READ ONLY").await?;
    let fetched = conn.fetch_all(statement.as_str()).await;
    let described = match &fetched {
        Ok(rows) if rows.is_empty() => Some(conn.describe(statement.as_str()).await),
        _ => None,
    };
    let _ = conn.execute("ROLLBACK").await;
    let rows = fetched.map_err(|e| {
        let read_only = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "25006");
        if read_only {
            refused(sql)
        } else {
            anyhow::Error::new(e).context(format!("query failed: {sql}"))
        }
    })?;
    let columns = match (rows.first(), described) {
        (Some(row), _) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
        (None, Some(Ok(d))) => d.columns().iter().map(|c| c.name().to_owned()).collect(),
        (None, _) => Vec::new(),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let cells = (0..row.len())
            .map(|i| {
                let raw: PgValueRef = row.try_get_raw(i)?;
                Ok(if raw.is_null() {
                    String::new()
                } else {
                    raw.as_str().map_err(|e| anyhow::anyhow!(e))?.to_owned()
                })
            })
            .collect::<Result<Vec<String>>>()?;
        out.push(cells);
    }
    Ok(QueryResult { columns, rows: out })
}

/// Each table of an experiment's export and the query that fills it (`$1` is the experiment).
const EXPORT_TABLES: &[(&str, &str)] = &[
    (
        "trials",
        "SELECT * FROM trials WHERE experiment = $1 ORDER BY overrides, id",
    ),
    (
        "metrics",
        "SELECT * FROM metrics WHERE experiment = $1 ORDER BY trial, step, name",
    ),
    (
        "checkpoints",
        "SELECT * FROM checkpoints WHERE experiment = $1 ORDER BY trial, step",
    ),
    (
        "evaluations",
        "SELECT * FROM evaluations WHERE experiment = $1 ORDER BY trial, step",
    ),
    (
        "episodes",
        "SELECT e.trial, e.step, p.* FROM episodes p JOIN evaluations e ON e.id = p.evaluation \
         WHERE e.experiment = $1 ORDER BY e.trial, e.step, p.idx",
    ),
];

impl super::Store {
    /// Every row of an experiment, table by table (`trials`, `metrics`, `checkpoints`,
    /// `evaluations`, `episodes`), for export.
    pub async fn export_experiment(
        &self,
        experiment: &str,
    ) -> Result<Vec<(&'static str, QueryResult)>> {
        let mut tables = Vec::with_capacity(EXPORT_TABLES.len());
        for (name, sql) in EXPORT_TABLES {
            tables.push((*name, run(self, sql, Some(experiment)).await?));
        }
        Ok(tables)
    }
}
