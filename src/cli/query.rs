//! `ebmlab query "SQL"`: read-only SQL over the results database.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::store::{block_on, Database, QueryResult, Store, DEFAULT_DB};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement; the connection is read-only, so writes are refused.
    sql: String,
    /// Print CSV instead of an aligned table.
    #[arg(long)]
    csv: bool,
    /// The results database: a SQLite file or `postgres://user@host/db`.
    #[arg(long, env = "EBMLAB_DB", default_value = DEFAULT_DB, value_parser = super::parse_database)]
    db: Database,
}

pub fn run(args: QueryArgs) -> Result<ExitCode> {
    let result = block_on(async {
        let store = Store::open_read_only(&args.db).await?;
        store.query(&args.sql).await
    })?;
    if args.csv {
        let mut out = csv::Writer::from_writer(std::io::stdout());
        out.write_record(&result.columns)?;
        for row in &result.rows {
            out.write_record(row)?;
        }
        out.flush()?;
    } else {
        print_table(&result);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(result: &QueryResult) {
    let mut widths: Vec<usize> = result.columns.iter().map(String::len).collect();
    for row in &result.rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&result.columns));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for row in &result.rows {
        println!("{}", line(row));
    }
    println!("({} rows)", result.rows.len());
}
