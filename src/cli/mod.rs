//! The command line: parse, call the library, print. One file per verb.

mod bench;
mod data;
mod eval;
mod export;
mod progress;
mod query;
mod report;
mod resume;
mod run;
mod schedule;
mod status;
mod train;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::Exit;
use crate::store::Database;
use tracing_subscriber::EnvFilter;

/// A flag that SIGINT and SIGTERM raise; trials poll it between iterations, save a
/// checkpoint and stop.
pub fn cancel_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

#[derive(Debug, Parser)]
#[command(
    name = "ebmlab",
    version,
    about = "Implicit behavioral cloning experiments on the N-D particle task"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); `EBMLAB_LOG` takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Demonstration data: generate it with the oracle, validate files.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train one trial from a spec, evaluate it, write its results.
    Train(train::TrainArgs),
    /// Run every trial of an experiment (sweep), skipping finished ones.
    Run(run::RunArgs),
    /// Evaluate a checkpoint or trial with batched rollouts.
    Eval(eval::EvalArgs),
    /// Finish every trial of an experiment that is not completed.
    Resume(resume::ResumeArgs),
    /// Trials, their states, progress and latest numbers.
    Status(status::StatusArgs),
    /// An experiment's tables as CSV files.
    Export(export::ExportArgs),
    /// Read-only SQL over the results database.
    Query(query::QueryArgs),
    /// Markdown/HTML report of experiments beside IBC's published numbers.
    Report(report::ReportArgs),
    /// Throughput figures as JSON lines, beside a PyTorch eager reference.
    Bench(bench::BenchArgs),
    /// One job of a run (started by the scheduler, not by hand).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// The database of a runs folder unless `--db` (or `EBMLAB_DB`) names another.
pub fn database_path(runs: &std::path::Path, db: &Option<Database>) -> Database {
    db.clone()
        .unwrap_or_else(|| Database::Sqlite(runs.join("ebmlab.sqlite")))
}

/// `--db`: a SQLite file (path or `sqlite://PATH`) or a PostgreSQL URL.
pub fn parse_database(text: &str) -> Result<Database, String> {
    text.parse().map_err(|e: anyhow::Error| e.to_string())
}

/// What `train` and `run` read: a spec, its overrides, and where results go.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// Experiment spec (TOML).
    pub spec: std::path::PathBuf,
    /// Override a spec key, e.g. `--set train.iterations=2000`, or the list swept for one,
    /// e.g. `--set 'sweep.task.n_dim=[2, 4]'` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where runs are written.
    #[arg(long, default_value = "runs")]
    pub runs: std::path::PathBuf,
    /// Results database: a SQLite file or `postgres://user@host/db` (default:
    /// RUNS/ebmlab.sqlite).
    #[arg(long, env = "EBMLAB_DB", value_parser = parse_database)]
    pub db: Option<Database>,
}

impl SpecArgs {
    pub fn database(&self) -> Database {
        database_path(&self.runs, &self.db)
    }
}

/// Parses the arguments, runs the verb and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    // Output piped into `head` and the like: stop quietly when the reader goes away,
    // as command-line tools do, instead of panicking on a broken pipe.
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Data(command) => data::run(command),
        Command::Train(args) => train::run(args),
        Command::Run(args) => run::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Resume(args) => resume::run(args),
        Command::Status(args) => status::run(args),
        Command::Query(args) => query::run(args),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::run(args),
        Command::Bench(args) => bench::run_bench(args),
        Command::Worker(args) => worker::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::Error.into()
        }
    }
}

fn init_logging(verbose: u8) {
    // PostgreSQL's notices (sqlx logs them) are not news for a user.
    let default = match verbose {
        0 => "info,sqlx=warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("EBMLAB_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only (a worker's stderr is its log file).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
