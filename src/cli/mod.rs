//! The command line: parse, call the library, print. One file per verb.

mod bench;
mod data;
mod eval;
mod export;
mod query;
mod report;
mod resume;
mod run;
mod status;
mod train;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Exit status of a command that ran but found the work wanting (validation failed).
pub const EXIT_FAILED_CHECK: u8 = 1;
/// Exit status of a command that could not run (bad input, I/O error).
pub const EXIT_ERROR: u8 = 2;
/// Exit status after Ctrl-C or SIGTERM (checkpoints saved).
pub const EXIT_CANCELLED: u8 = 130;

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

/// The database of a runs folder unless `--db` names another.
pub fn database_path(
    runs: &std::path::Path,
    db: &Option<std::path::PathBuf>,
) -> std::path::PathBuf {
    db.clone().unwrap_or_else(|| runs.join("ebmlab.sqlite"))
}

/// What `train` and `run` read: a spec, its overrides, and where results go.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// Experiment spec (TOML).
    pub spec: std::path::PathBuf,
    /// Override a spec key, e.g. `--set train.iterations=2000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where runs are written.
    #[arg(long, default_value = "runs")]
    pub runs: std::path::PathBuf,
    /// Results database (default: RUNS/ebmlab.sqlite).
    #[arg(long)]
    pub db: Option<std::path::PathBuf>,
}

/// How `run` and `resume` schedule their jobs.
#[derive(Debug, clap::Args)]
pub struct SchedArgs {
    /// Stop at the first failed job (running workers checkpoint and stop).
    #[arg(long)]
    pub fail_fast: bool,
    /// Attempts after a failure, each continuing from the trial's latest checkpoint.
    #[arg(long, default_value_t = 0)]
    pub max_retries: u32,
    /// Trials run at once on the CPU (default: `resources.cpu_slots`, else one per core).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Seconds without a heartbeat after which a `running` trial is taken as dead.
    #[arg(long, default_value_t = 60)]
    pub stale_after: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl SchedArgs {
    pub fn options(&self) -> crate::sched::RunOptions {
        crate::sched::RunOptions {
            fail_fast: self.fail_fast,
            max_retries: self.max_retries,
            stale_after: std::time::Duration::from_secs(self.stale_after),
            cpu_slots: self.slots,
            progress: !self.quiet,
            report_events: true,
        }
    }
}

/// Runs the jobs of `trials`, then prints the experiment's status table; the exit status
/// says whether every trial completed (130 after a signal).
pub fn schedule_and_report(
    experiment: &crate::sched::Experiment,
    trials: &[String],
    args: &SchedArgs,
) -> anyhow::Result<ExitCode> {
    let summary = crate::sched::run_experiment(
        experiment,
        trials,
        &args.options(),
        &crate::sched::LocalBackend,
    )?;
    let rows = crate::store::block_on(async {
        let store = crate::store::Store::open(&experiment.db).await?;
        store.trial_status(Some(&experiment.name)).await
    })?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| trials.contains(&r.id))
        .collect();
    println!();
    status::print_trials(&rows);
    let completed = rows.iter().filter(|r| r.status == "completed").count();
    println!(
        "{completed} of {} trials completed; {} jobs run, {} failed{}",
        rows.len(),
        summary.launched,
        summary.failures.len(),
        if summary.running_elsewhere.is_empty() {
            String::new()
        } else {
            format!(
                "; {} running in another process",
                summary.running_elsewhere.len()
            )
        }
    );
    Ok(if summary.cancelled {
        ExitCode::from(EXIT_CANCELLED)
    } else if !summary.failures.is_empty()
        || completed + summary.running_elsewhere.len() < rows.len()
    {
        ExitCode::from(EXIT_FAILED_CHECK)
    } else {
        ExitCode::SUCCESS
    })
}

impl SpecArgs {
    pub fn database(&self) -> std::path::PathBuf {
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
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("EBMLAB_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
