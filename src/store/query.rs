//! Arbitrary read-only SQL, rendered as text cells.

use anyhow::{Context, Result};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Column, Row, TypeInfo, ValueRef};

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
async fn writes(pool: &SqlitePool, sql: &str) -> Result<bool> {
    use libsqlite3_sys as ffi;
    let mut conn = pool.acquire().await?;
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

pub async fn run(pool: &SqlitePool, sql: &str, bind: Option<&str>) -> Result<QueryResult> {
    if writes(pool, sql).await? {
        anyhow::bail!(
            "`ebmlab query` is read-only, and this statement would change the database: {sql}"
        );
    }
    let mut query = sqlx::query(sql);
    if let Some(value) = bind {
        query = query.bind(value);
    }
    let rows = query
        .fetch_all(pool)
        .await
        .with_context(|| format!("query failed: {sql}"))?;
    // Column names come from the statement, so an empty result still has its header.
    let columns = match rows.first() {
        Some(r) => r.columns().iter().map(|c| c.name().to_owned()).collect(),
        None => {
            let described = sqlx::Executor::describe(pool, sql).await?;
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

/// Each table of an experiment's export and the query that fills it (`?` is the experiment).
const EXPORT_TABLES: &[(&str, &str)] = &[
    (
        "trials",
        "SELECT * FROM trials WHERE experiment = ? ORDER BY overrides, id",
    ),
    (
        "metrics",
        "SELECT * FROM metrics WHERE experiment = ? ORDER BY trial, step, name",
    ),
    (
        "checkpoints",
        "SELECT * FROM checkpoints WHERE experiment = ? ORDER BY trial, step",
    ),
    (
        "evaluations",
        "SELECT * FROM evaluations WHERE experiment = ? ORDER BY trial, step",
    ),
    (
        "episodes",
        "SELECT e.trial, e.step, p.* FROM episodes p JOIN evaluations e ON e.id = p.evaluation \
         WHERE e.experiment = ? ORDER BY e.trial, e.step, p.idx",
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
            tables.push((*name, run(self.pool(), sql, Some(experiment)).await?));
        }
        Ok(tables)
    }
}
