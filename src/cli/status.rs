//! `ebmlab status [EXPERIMENT]`: trials, states, progress and latest numbers.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::store::{
    block_on, parse_timestamp, Database, Store, TrialStatus, TrialStatusRow, DEFAULT_DB,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this experiment.
    experiment: Option<String>,
    /// The results database: a SQLite file or `postgres://user@host/db`.
    #[arg(long, env = "EBMLAB_DB", default_value = DEFAULT_DB, value_parser = super::parse_database)]
    db: Database,
}

fn age(timestamp: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    match timestamp.and_then(parse_timestamp) {
        None => "-".into(),
        Some(t) => {
            let s = (now - t).max(0.0) as u64;
            match s {
                0..=119 => format!("{s}s"),
                120..=7199 => format!("{}m", s / 60),
                _ => format!("{}h", s / 3600),
            }
        }
    }
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let rows = block_on(async {
        let store = Store::open_read_only(&args.db).await?;
        store.trial_status(args.experiment.as_deref()).await
    })?;
    if rows.is_empty() {
        println!("no trials recorded in {}", args.db);
        return Ok(ExitCode::SUCCESS);
    }
    print_trials(&rows);
    Ok(ExitCode::SUCCESS)
}

/// The status table: one line per trial (and its error under a failed or killed one); the
/// backend's job ids (Slurm's) when trials have them.
pub fn print_trials(rows: &[TrialStatusRow]) {
    let jobs = rows.iter().any(|r| r.backend_job.is_some());
    let job = |r: Option<&TrialStatusRow>| match (jobs, r) {
        (false, _) => String::new(),
        (true, None) => format!("{:>10} ", "job"),
        (true, Some(r)) => format!("{:>10} ", r.backend_job.as_deref().unwrap_or("-")),
    };
    println!(
        "{:16} {:12} {:9} {:>15} {:12} {:15} {}{:>9} {:>22} {:>9}  settings",
        "experiment",
        "trial",
        "status",
        "progress",
        "device",
        "pack",
        job(None),
        "loss",
        "success [95% CI]",
        "heartbeat"
    );
    for r in rows {
        let progress = format!(
            "{}/{} {:3.0}%",
            r.step,
            r.iterations,
            100.0 * r.step as f64 / r.iterations.max(1) as f64
        );
        let success = match (r.success_rate, r.ci_low, r.ci_high) {
            (Some(s), Some(lo), Some(hi)) => {
                format!(
                    "{:5.1}% [{:4.1}, {:4.1}]",
                    100.0 * s,
                    100.0 * lo,
                    100.0 * hi
                )
            }
            _ => "-".into(),
        };
        let settings = if r.overrides == "{}" {
            String::new()
        } else {
            r.overrides.clone()
        };
        println!(
            "{:16} {:12} {:9} {:>15} {:12} {:15} {}{:>9} {:>22} {:>9}  {}",
            r.experiment,
            r.id,
            r.status,
            progress,
            r.device.as_deref().unwrap_or("-"),
            r.pack.as_deref().unwrap_or("-"),
            job(Some(r)),
            r.loss.map_or("-".into(), |l| format!("{l:.4}")),
            success,
            if r.status == TrialStatus::Running {
                age(r.heartbeat_at.as_deref())
            } else {
                "-".into()
            },
            settings
        );
        if let Some(error) = r
            .error
            .as_deref()
            .filter(|_| matches!(r.status, TrialStatus::Failed | TrialStatus::Killed))
        {
            println!("{:30}{}", "", error.lines().next().unwrap_or_default());
        }
    }
}
