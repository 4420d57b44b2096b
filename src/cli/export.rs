//! `ebmlab export EXPERIMENT --csv DIR`: an experiment's tables as CSV files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::store::{block_on, Database, Store, DEFAULT_DB};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Experiment name (as in `ebmlab status`).
    experiment: String,
    /// Folder to write `trials.csv`, `metrics.csv`, `checkpoints.csv`, `evaluations.csv`
    /// and `episodes.csv` into (created if missing).
    #[arg(long = "csv", value_name = "DIR")]
    dir: PathBuf,
    /// The results database: a SQLite file or `postgres://user@host/db`.
    #[arg(long, env = "EBMLAB_DB", default_value = DEFAULT_DB, value_parser = super::parse_database)]
    db: Database,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let results = block_on(async {
        let store = Store::open_read_only(&args.db).await?;
        store.export_experiment(&args.experiment).await
    })?;
    if results[0].1.rows.is_empty() {
        bail!(
            "no trials of experiment `{}` in {}",
            args.experiment,
            args.db
        );
    }
    for (name, result) in &results {
        let path = args.dir.join(format!("{name}.csv"));
        let mut out = csv::Writer::from_path(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        out.write_record(&result.columns)?;
        for row in &result.rows {
            out.write_record(row)?;
        }
        out.flush()?;
        println!("{:>8} rows  {}", result.rows.len(), path.display());
    }
    Ok(ExitCode::SUCCESS)
}
