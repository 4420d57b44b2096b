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

pub async fn run(pool: &SqlitePool, sql: &str, bind: Option<&str>) -> Result<QueryResult> {
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
