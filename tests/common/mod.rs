//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A spec that trains and evaluates in a second: 6 iterations of a 16-wide net, 4 episodes.
pub const TINY: &str = "name = \"tiny-sweep\"\n\
    [data]\ndemos = 10\n\
    [policy]\nhidden = 16\n\
    [train]\niterations = 6\nbatch_size = 16\ncheckpoint_every = 3\neval_every = 0\nlog_every = 1\n\
    [train.negatives]\nkind = \"uniform\"\ncount = 8\n\
    [eval]\nepisodes = 4\nsamples = 64\n\
    [resources]\ndevice = \"cpu\"\n";

/// The project's own Python (with torch and numpy), installed by `scripts/setup.sh`.
pub fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a Python program with `input` on stdin and returns its stdout.
pub fn run_python(program: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the `ebmlab` binary with arguments.
pub fn ebmlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebmlab"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("ebmlab runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// libtorch's random generator is process-global: tests that train or sample hold this
/// lock so that parallel test threads do not interleave their draws.
pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `ebmlab resume EXPERIMENT --quiet --runs RUNS`.
pub fn resume(experiment: &str, runs: &std::path::Path) -> Output {
    ebmlab(&[
        "resume",
        experiment,
        "--quiet",
        "--runs",
        runs.to_str().unwrap(),
    ])
}

/// `ebmlab report EXPERIMENTS... --db DB --out OUT --trajectories N`.
pub fn report(
    db: &std::path::Path,
    experiments: &[&str],
    out: &std::path::Path,
    trajectories: usize,
) -> Output {
    let trajectories = trajectories.to_string();
    let mut args = vec!["report"];
    args.extend_from_slice(experiments);
    args.extend([
        "--db",
        db.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--trajectories",
        &trajectories,
    ]);
    ebmlab(&args)
}

/// `ebmlab query SQL --csv` on a results database, or `None` when the query fails
/// (for polling a database that may not exist yet).
pub fn try_query_csv(db: &std::path::Path, sql: &str) -> Option<String> {
    let out = ebmlab(&["query", sql, "--csv", "--db", db.to_str().unwrap()]);
    out.status.success().then(|| stdout(&out))
}

/// `ebmlab query SQL --csv` on a results database, which must succeed.
pub fn query_csv(db: &std::path::Path, sql: &str) -> String {
    let out = ebmlab(&["query", sql, "--csv", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out)
}
