//! What the orchestrator promises a user: failures exit 1 and say which trial failed and
//! why, altered checkpoints are refused by every reader, bad trial files are errors, and a
//! second task runs through the same code as the particle task.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::{ebmlab, query_csv, stderr, stdout};

/// `common::TINY` as experiment `trust`.
fn tiny() -> String {
    common::TINY.replace("tiny-sweep", "trust")
}

fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("spec.toml");
    fs::write(&file, text).unwrap();
    file
}

fn run(args: &[&str], file: &Path, runs: &Path) -> std::process::Output {
    let mut all = vec!["run", file.to_str().unwrap(), "--quiet"];
    all.extend_from_slice(args);
    all.extend(["--runs", runs.to_str().unwrap()]);
    ebmlab(&all)
}

/// Changes the last bytes of a file (tensor data), keeping its size.
fn flip_bytes(path: &Path) -> (String, String) {
    let before = ebmlab::checkpoint::file_sha256(path).unwrap();
    let mut bytes = fs::read(path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 8..] {
        *b ^= 0x5a;
    }
    fs::write(path, &bytes).unwrap();
    (before, ebmlab::checkpoint::file_sha256(path).unwrap())
}

fn trial_dir(runs: &Path, experiment: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(runs.join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn fail_fast_exits_1_and_names_the_trial_that_failed_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "trials = [{{ \"train.lr\" = 1e30 }}, {{ \"train.iterations\" = 20000 }}, \
         {{ \"train.iterations\" = 20001 }}]\n{}",
        tiny()
    );
    let file = write_spec(dir.path(), &spec);
    let runs = dir.path().join("runs");
    let out = run(&["--fail-fast", "--slots", "2"], &file, &runs);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let failed = text
        .lines()
        .find(|l| l.starts_with("failed: train "))
        .unwrap_or_else(|| panic!("no failure named: {text}"));
    assert!(
        failed.contains("train.lr=1e+30") && failed.contains("loss became"),
        "{failed}"
    );
    assert!(text.contains("--fail-fast: train "), "{text}");
    let db = runs.join("ebmlab.sqlite");
    let statuses = query_csv(&db, "SELECT status FROM trials ORDER BY overrides");
    let statuses: Vec<&str> = statuses.lines().skip(1).collect();
    // The other one was stopped: checkpointed (killed), or stopped before it started.
    assert!(
        matches!(statuses[..], ["killed" | "pending", "pending", "failed"]),
        "{statuses:?}"
    );
}

#[test]
fn altered_checkpoint_bytes_are_refused_by_eval_report_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &tiny());
    let runs = dir.path().join("runs");
    let out = run(&[], &file, &runs);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let trial = trial_dir(&runs, "trust");
    let model = trial.join("checkpoints/step_0000006.safetensors");
    let (before, after) = flip_bytes(&model);
    let named = |text: &str| {
        text.contains(model.to_str().unwrap()) && text.contains(&before) && text.contains(&after)
    };

    let out = ebmlab(&["eval", trial.to_str().unwrap(), "--episodes", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(named(&stderr(&out)), "{}", stderr(&out));

    let db = runs.join("ebmlab.sqlite");
    let report = dir.path().join("report");
    let out = common::report(&db, &["trust"], &report, 4);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(named(&stderr(&out)), "{}", stderr(&out));
    let markdown = fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        named(&markdown),
        "the report says why it has no trajectories"
    );

    // A trial stopped at its first checkpoint, whose file is then altered: resume refuses
    // to continue from it, and the trial says why.
    let runs = dir.path().join("stopped");
    let loaded = ebmlab::spec::load_spec(&file, &[]).unwrap().spec;
    let stop_at_once = AtomicBool::new(true);
    let _torch = common::torch_lock();
    let no_overrides = Default::default();
    let trial = ebmlab::trial::RecordedTrial {
        spec: &loaded,
        spec_path: &file,
        overrides: &no_overrides,
    };
    let stopped = ebmlab::trial::run_recorded_trial(
        trial,
        &runs,
        &runs.join("ebmlab.sqlite").into(),
        &Default::default(),
        &stop_at_once,
    );
    assert!(stopped.is_err(), "cancelled before the first step");
    let model = trial_dir(&runs, "trust").join("checkpoints/step_0000000.safetensors");
    let (before, after) = flip_bytes(&model);
    let out = common::resume("trust", &runs);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let failed = text.lines().find(|l| l.starts_with("failed:")).unwrap();
    assert!(
        failed.contains(model.to_str().unwrap())
            && failed.contains(&before)
            && failed.contains(&after),
        "{failed}"
    );
    let db = runs.join("ebmlab.sqlite");
    assert!(query_csv(&db, "SELECT error FROM trials").contains(&after));
}

#[test]
fn a_trial_config_that_does_not_parse_is_an_error_not_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_spec(dir.path(), &tiny());
    let runs = dir.path().join("runs");
    assert!(run(&[], &file, &runs).status.success());
    let trial = trial_dir(&runs, "trust");
    fs::write(trial.join("config.toml"), "name = \n").unwrap();
    let out = ebmlab(&["eval", trial.to_str().unwrap(), "--episodes", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(trial.join("config.toml").to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn the_toy_task_trains_evaluates_and_reports_through_the_task_trait() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "name = \"toy\"\n\
        [task]\nkind = \"point_mass\"\n\
        [data]\ndemos = 200\n\
        [policy]\nhidden = 64\n\
        [train]\niterations = 600\nbatch_size = 128\nlr = 0.003\ncheckpoint_every = 300\n\
        eval_every = 300\nlog_every = 10\n\
        [train.negatives]\nkind = \"uniform\"\ncount = 64\n\
        [eval]\nepisodes = 50\nsamples = 512\n\
        [resources]\ndevice = \"cpu\"\n";
    let file = write_spec(dir.path(), spec);
    let runs = dir.path().join("runs");
    let out = run(&["--slots", "1"], &file, &runs);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let db = runs.join("ebmlab.sqlite");
    // The evaluation at 300 ran as its own job, the one at 600 in the trial.
    let evaluations = query_csv(
        &db,
        "SELECT step, episodes, success_rate FROM evaluations ORDER BY step",
    );
    let rows: Vec<Vec<f64>> = evaluations
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{evaluations}");
    assert_eq!((rows[0][0], rows[1][0], rows[1][1]), (300.0, 600.0, 50.0));
    assert!(rows[1][2] >= 0.8, "the toy is learnt: {evaluations}");
    let trial = trial_dir(&runs, "toy");
    let task: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(trial.join("checkpoints/task.json")).unwrap())
            .unwrap();
    assert_eq!(task["kind"], "point_mass");
    let out = ebmlab(&[
        "eval",
        trial.to_str().unwrap(),
        "--episodes",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["step"], 600);
    let report = dir.path().join("report");
    let out = common::report(&db, &["toy"], &report, 16);
    assert!(out.status.success(), "{}", stderr(&out));
    let markdown = fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        markdown.contains("replayed from its checkpoint gives the recorded"),
        "{markdown}"
    );
    // No demo file format: said, not guessed.
    let out = ebmlab(&[
        "data",
        "generate",
        "--task",
        "point_mass",
        "--episodes",
        "2",
        "--out",
        dir.path().join("demos").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no demonstration file format"),
        "{}",
        stderr(&out)
    );
}
