//! `ebmlab report EXPERIMENT [EXPERIMENT...]`: report.md, report.html (self-contained),
//! report.json and figures/, from the results database alone. Exit 1 when a checkpoint it
//! would replay was altered since it was written (the report is written without it).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::exit::Exit;
use crate::report::{write_report, ReportOptions};
use crate::store::{Database, DEFAULT_DB};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Experiments (several: side by side).
    #[arg(required = true)]
    experiments: Vec<String>,
    /// Output folder (default: reports/<experiments joined by +>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The results database: a SQLite file or `postgres://user@host/db`.
    #[arg(long, env = "EBMLAB_DB", default_value = DEFAULT_DB, value_parser = super::parse_database)]
    db: Database,
    /// Evaluation episodes of the best checkpoint to draw (replayed from it; 0: none).
    #[arg(long, default_value_t = 16)]
    trajectories: usize,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("reports").join(args.experiments.join("+")));
    let files = write_report(
        &args.db,
        &args.experiments,
        &ReportOptions {
            out,
            trajectories: args.trajectories,
        },
    )?;
    println!(
        "wrote {}, {}, {} and {} figures",
        files.markdown.display(),
        files.html.display(),
        files.json.display(),
        files.figures.len()
    );
    for problem in &files.problems {
        eprintln!("error: {problem}");
    }
    Ok(if files.problems.is_empty() {
        Exit::Success
    } else {
        Exit::Failed
    }
    .into())
}
