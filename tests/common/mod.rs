//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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
