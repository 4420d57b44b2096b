//! The Slurm backend with results in PostgreSQL, on real daemons: a one-node Slurm cluster
//! and a PostgreSQL server started by `scripts/cluster.sh` (`scripts/test.sh` brings them
//! up and sets `EBMLAB_TEST_SLURM` and `EBMLAB_TEST_POSTGRES`). Nothing here is mocked.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ebmlab, stderr, stdout, TINY};
use ebmlab::store::Database;

/// The cluster, when the tests may use it (under CI they must).
fn cluster(name: &str) -> Option<Database> {
    if std::env::var_os("EBMLAB_TEST_SLURM").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must test the Slurm backend: set EBMLAB_TEST_SLURM (scripts/test.sh does)"
        );
        eprintln!("EBMLAB_TEST_SLURM is not set: no Slurm test");
        return None;
    }
    common::postgres_database(name)
}

/// One test at a time: the node has two cores.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn spec(dir: &Path, name: &str, iterations: u64, seeds: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    // A network wide enough that a trial takes seconds, so a test can act while it runs.
    let text = TINY
        .replace("tiny-sweep", name)
        .replace("hidden = 16", "hidden = 64")
        .replace("batch_size = 16", "batch_size = 64")
        .replace("iterations = 6", &format!("iterations = {iterations}"))
        .replace("checkpoint_every = 3", "checkpoint_every = 100")
        .replace("eval_every = 0", "eval_every = 0\nlog_every = 10");
    let text = text.replacen("log_every = 1\n", "", 1);
    fs::write(
        &file,
        format!("{text}[sweep]\n\"train.seed\" = [{seeds}]\n"),
    )
    .unwrap();
    file
}

/// Quick looks at jobs, and heartbeats (Slurm passes the environment on to the jobs).
fn slurm_env(command: &mut Command) -> &mut Command {
    command
        .env("EBMLAB_SLURM_POLL_SECONDS", "0.3")
        .env("EBMLAB_HEARTBEAT_SECONDS", "0.2")
}

/// `ebmlab VERB TARGET --backend slurm --quiet --runs RUNS --db DB`.
fn slurm_verb(verb: &str, target: &str, runs: &Path, db: &Database) -> Vec<String> {
    [verb, target, "--backend", "slurm", "--quiet", "--runs"]
        .into_iter()
        .map(str::to_owned)
        .chain([runs.display().to_string(), "--db".into(), db.arg()])
        .collect()
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    slurm_env(&mut Command::new(env!("CARGO_BIN_EXE_ebmlab")))
        .args(args)
        .output()
        .unwrap()
}

fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Child {
    slurm_env(&mut Command::new(env!("CARGO_BIN_EXE_ebmlab")))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn query(db: &Database, sql: &str) -> String {
    let out = ebmlab(&["query", sql, "--csv", "--db", &db.arg()]);
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out)
}

/// The rows of `sql` as CSV lines, read in this process: polling through `ebmlab query`
/// loads libtorch at every look (seconds on a busy machine, while a trial runs out).
fn query_here(db: &Database, sql: &str) -> Option<String> {
    let result = ebmlab::store::block_on(async {
        let store = ebmlab::store::Store::open_read_only(db).await?;
        store.query(sql).await
    })
    .ok()?;
    let mut text = result.columns.join(",") + "\n";
    for row in result.rows {
        text += &row.join(",");
        text += "\n";
    }
    Some(text)
}

/// Polls the first value of a query until `done` says so (at most 3 minutes).
fn wait_for(db: &Database, sql: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let out = query_here(db, sql);
        let value = out
            .as_deref()
            .and_then(|text| text.lines().nth(1))
            .unwrap_or_default()
            .to_owned();
        if out.is_some() && done(&value) {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{sql}: still {value:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn slurm(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn final_weights(runs: &Path, experiment: &str, step: u64) -> Vec<Vec<u8>> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(runs.join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| fs::read(d.join(format!("checkpoints/step_{step:07}.safetensors"))).unwrap())
        .collect()
}

#[test]
fn a_sweep_runs_as_slurm_jobs_with_its_results_in_postgres() {
    let Some(db) = cluster("sweep") else { return };
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = spec(dir.path(), "slurm-sweep", 200, "0, 1, 2");
    let runs = dir.path().join("runs");
    let out = run(&slurm_verb("run", file.to_str().unwrap(), &runs, &db));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("3 of 3 trials completed"),
        "{}",
        stdout(&out)
    );
    // The database names each trial's Slurm job; sacct knows each as completed.
    let jobs = query(&db, "SELECT backend_job FROM trials ORDER BY backend_job");
    let jobs: Vec<&str> = jobs.lines().skip(1).collect();
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        let state = slurm("sacct", &["-n", "-X", "-P", "-o", "State", "-j", job]);
        assert_eq!(state.trim(), "COMPLETED", "job {job}");
    }
    let status = ebmlab(&["status", "--db", &db.arg()]);
    for job in &jobs {
        assert!(
            stdout(&status).contains(&format!(" {job} ")),
            "{}",
            stdout(&status)
        );
    }
    assert_eq!(
        query(&db, "SELECT COUNT(*), COUNT(DISTINCT trial || '/' || step) FROM metrics WHERE name = 'loss'"),
        "count,count\n60,60\n"
    );
    let report = dir.path().join("report");
    let out = common::report_with(&db.arg(), &["slurm-sweep"], &report, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read_to_string(report.join("report.md"))
        .unwrap()
        .contains("slurm-sweep"));
}

#[test]
fn killing_the_run_leaves_its_jobs_running_and_resume_follows_them_to_the_same_weights() {
    let Some(db) = cluster("killed") else { return };
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = spec(dir.path(), "slurm-killed", 3000, "0, 1");
    let runs = dir.path().join("runs");
    let mut child = spawn(&slurm_verb("run", file.to_str().unwrap(), &runs, &db));
    wait_for(
        &db,
        "SELECT COUNT(DISTINCT c.trial) FROM checkpoints c JOIN trials t ON t.id = c.trial \
         WHERE t.status = 'running'",
        |v| v == "2",
    );
    common::kill("-KILL", &[child.id().to_string()]);
    child.wait().unwrap();
    // The jobs go on without the run that submitted them.
    let jobs = query(&db, "SELECT backend_job FROM trials ORDER BY backend_job");
    for job in jobs.lines().skip(1) {
        assert!(
            !slurm("squeue", &["-h", "-j", job]).trim().is_empty(),
            "job {job} left the queue"
        );
    }
    let out = run(&slurm_verb("resume", "slurm-killed", &runs, &db));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("following it"), "{text}");
    // Each trial ran once: one attempt, one row per step.
    assert_eq!(query(&db, "SELECT MAX(attempt) FROM trials"), "max\n1\n");
    assert_eq!(
        query(&db, "SELECT COUNT(*), COUNT(DISTINCT trial || '/' || step) FROM metrics WHERE name = 'loss'"),
        "count,count\n600,600\n"
    );
    let straight = dir.path().join("straight");
    let out = ebmlab(&[
        "run",
        file.to_str().unwrap(),
        "--quiet",
        "--runs",
        straight.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        final_weights(&runs, "slurm-killed", 1500),
        final_weights(&straight, "slurm-killed", 1500)
    );
}

/// One trial long enough to act on (3,000 iterations), running as a Slurm job past its
/// second checkpoint; the `run` that follows it, and the job's id.
struct RunningTrial {
    db: Database,
    dir: tempfile::TempDir,
    runs: PathBuf,
    run: std::process::Child,
    job: String,
}

fn one_running_trial(name: &str) -> Option<RunningTrial> {
    let db = cluster(name)?;
    let dir = tempfile::tempdir().unwrap();
    let experiment = format!("slurm-{name}");
    let file = spec(dir.path(), &experiment, 3000, "0");
    let runs = dir.path().join("runs");
    let run = spawn(&slurm_verb("run", file.to_str().unwrap(), &runs, &db));
    wait_for(
        &db,
        "SELECT COUNT(*) FROM checkpoints c JOIN trials t ON t.id = c.trial \
         WHERE t.status = 'running'",
        |v| v.parse::<u64>().is_ok_and(|n| n >= 2),
    );
    let job = query_here(&db, "SELECT backend_job FROM trials").unwrap();
    let job = job.lines().nth(1).unwrap().to_owned();
    Some(RunningTrial {
        db,
        dir,
        runs,
        run,
        job,
    })
}

#[test]
fn a_cancelled_job_leaves_its_trial_killed_with_a_checkpoint_and_resume_completes_it() {
    let _one = one_at_a_time();
    let Some(t) = one_running_trial("cancelled") else {
        return;
    };
    slurm("scancel", &[&t.job]);
    let out = t.run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the run says a job failed");
    assert_eq!(
        query(&t.db, "SELECT status FROM trials"),
        "status\nkilled\n"
    );
    assert_ne!(
        query(&t.db, "SELECT COUNT(*) FROM checkpoints"),
        "count\n0\n"
    );
    let out = run(&slurm_verb("resume", "slurm-cancelled", &t.runs, &t.db));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        query(&t.db, "SELECT status, attempt FROM trials"),
        "status,attempt\ncompleted,2\n"
    );
    drop(t.dir);
}

#[test]
fn a_requeued_job_continues_from_its_checkpoint() {
    let _one = one_at_a_time();
    let Some(t) = one_running_trial("requeued") else {
        return;
    };
    slurm("scontrol", &["requeue", &t.job]);
    let out = t.run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let db = &t.db;
    // The same job ran twice; the second time its trial continued from a checkpoint.
    assert_eq!(
        query(db, "SELECT status, attempt FROM trials"),
        "status,attempt\ncompleted,2\n"
    );
    let trial = query(db, "SELECT id FROM trials");
    let summary = fs::read_to_string(
        t.runs
            .join("slurm-requeued")
            .join(trial.lines().nth(1).unwrap())
            .join("summary.json"),
    )
    .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(
        summary["resumed_from"].as_u64().is_some_and(|s| s >= 100),
        "{summary}"
    );
    assert_eq!(
        query(
            db,
            "SELECT COUNT(*), COUNT(DISTINCT step) FROM metrics WHERE name = 'loss'"
        ),
        "count,count\n300,300\n"
    );
}
