//! `ebmlab run`: sweep expansion, failures that do not stop the others, nothing rerun.

mod common;

use std::fs;

use common::{ebmlab, kill, query_one, spawn_run, stderr, stdout, wait_for, TINY};
use ebmlab::spec::{expand_trials, load_spec_with_env};

#[test]
fn the_dry_run_counts_the_product_of_the_sweep_lists() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    fs::write(
        &file,
        format!("{TINY}[sweep]\n\"train.seed\" = [0, 1, 2]\n\"policy.kind\" = [\"ebm\", \"mse\"]\n\"task.n_dim\" = [2, 4]\n"),
    )
    .unwrap();
    let spec = load_spec_with_env(&file, &[], Vec::new()).unwrap().spec;
    let plans = expand_trials(&spec).unwrap();
    assert_eq!(plans.len(), 12);
    let mut ids: Vec<String> = plans.iter().map(|p| p.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every trial has its own id");
    assert!(plans.iter().any(
        |p| matches!(&p.spec.task, ebmlab::task::TaskConfig::Particle(c) if c.n_dim == 4)
            && p.spec.policy.kind == "mse"
            && p.spec.train.seed == 2
    ));

    let out = ebmlab(&[
        "run",
        file.to_str().unwrap(),
        "--dry-run",
        "--runs",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("tiny-sweep: 12 trials"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("to run")).count(), 12);

    // An explicit list crossed with the sweep; a key in both is refused.
    fs::write(
        &file,
        format!("trials = [{{ \"train.lr\" = 0.001 }}, {{ \"train.lr\" = 0.002, \"policy.hidden\" = 32 }}]\n{TINY}[sweep]\n\"train.seed\" = [0, 1]\n"),
    )
    .unwrap();
    let spec = load_spec_with_env(&file, &[], Vec::new()).unwrap().spec;
    let plans = expand_trials(&spec).unwrap();
    assert_eq!(plans.len(), 4);
    assert_eq!(plans[2].spec.policy.hidden, 32);
    fs::write(
        &file,
        format!("trials = [{{ \"train.seed\" = 5 }}]\n{TINY}[sweep]\n\"train.seed\" = [0, 1]\n"),
    )
    .unwrap();
    let spec = load_spec_with_env(&file, &[], Vec::new()).unwrap().spec;
    assert!(format!("{:#}", expand_trials(&spec).unwrap_err()).contains("train.seed"));
    // A value of the wrong type names the key.
    fs::write(
        &file,
        format!("{TINY}[sweep]\n\"train.seed\" = [0, \"one\"]\n"),
    )
    .unwrap();
    let spec = load_spec_with_env(&file, &[], Vec::new()).unwrap().spec;
    let err = format!("{:#}", expand_trials(&spec).unwrap_err());
    assert!(err.contains("train.seed"), "{err}");
}

#[test]
fn a_failed_trial_is_recorded_while_the_rest_complete_and_nothing_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    // lr = 1e30 makes the loss diverge at the second step.
    fs::write(
        &file,
        format!("{TINY}[sweep]\n\"train.lr\" = [0.001, 1e30]\n\"train.seed\" = [0, 1]\n"),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let run = || {
        ebmlab(&[
            "run",
            file.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
            "--quiet",
        ])
    };
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("2 of 4 trials completed"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" failed: loss became"))
            .count(),
        2,
        "{text}"
    );
    // The results store holds the same story.
    let db = runs.join("ebmlab.sqlite");
    let query = |sql: &str| common::query_csv(&db, sql);
    assert_eq!(
        query("SELECT status, COUNT(*) FROM trials GROUP BY status ORDER BY status"),
        "status,COUNT(*)\ncompleted,2\nfailed,2\n"
    );
    let errors = query("SELECT error FROM trials WHERE status = 'failed'");
    assert_eq!(errors.matches("loss became").count(), 2, "{errors}");
    // Completed trials: 6 logged steps x 8 metrics, each once; checkpoints at 3 and 6.
    assert_eq!(
        query("SELECT COUNT(*), COUNT(DISTINCT m.step) FROM metrics m JOIN trials t ON t.id = m.trial WHERE t.status = 'completed' GROUP BY m.trial"),
        "COUNT(*),COUNT(DISTINCT m.step)\n48,6\n48,6\n"
    );
    assert_eq!(query("SELECT COUNT(*) FROM checkpoints c JOIN trials t ON t.id = c.trial WHERE t.status = 'completed'"), "COUNT(*)\n4\n");
    let checkpoint = query("SELECT path, sha256, bytes FROM checkpoints WHERE step = 6 LIMIT 1");
    let row: Vec<&str> = checkpoint.lines().nth(1).unwrap().split(',').collect();
    let bytes = fs::read(row[0]).unwrap();
    assert_eq!(row[2].parse::<usize>().unwrap(), bytes.len());
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(row[1], sha);
    assert_eq!(
        query("SELECT e.step, e.episodes, COUNT(p.idx) FROM evaluations e JOIN episodes p ON p.evaluation = e.id GROUP BY e.id"),
        "step,episodes,COUNT(p.idx)\n6,4,4\n6,4,4\n"
    );

    let out = ebmlab(&["status", "tiny-sweep", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains(" completed ") && l.contains("6/6 100%"))
            .count(),
        2,
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains(" failed ")).count(),
        2,
        "{table}"
    );
    assert_eq!(table.matches("loss became").count(), 2, "{table}");
    // Export: one CSV per table, the same rows as the database holds.
    let export = dir.path().join("export");
    let out = ebmlab(&[
        "export",
        "tiny-sweep",
        "--csv",
        export.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (table, sql) in [
        ("trials", "SELECT COUNT(*) FROM trials"),
        ("metrics", "SELECT COUNT(*) FROM metrics"),
        ("checkpoints", "SELECT COUNT(*) FROM checkpoints"),
        ("evaluations", "SELECT COUNT(*) FROM evaluations"),
        ("episodes", "SELECT COUNT(*) FROM episodes"),
    ] {
        let rows = fs::read_to_string(export.join(format!("{table}.csv")))
            .unwrap()
            .lines()
            .count()
            - 1;
        let expected: usize = query(sql).lines().nth(1).unwrap().parse().unwrap();
        assert_eq!(rows, expected, "{table}");
    }
    let out = ebmlab(&["status", "other", "--db", db.to_str().unwrap()]);
    assert!(stdout(&out).contains("no trials recorded"));

    // Again: only the failed trials are started (and fail again); completed ones are not
    // trained a second time.
    let failed_ids = query("SELECT id FROM trials WHERE status = 'failed' ORDER BY id");
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let started: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("start  train"))
        .collect();
    assert_eq!(started.len(), 2, "{text}");
    for id in failed_ids.lines().skip(1) {
        assert!(started.iter().any(|l| l.contains(id)), "{id}: {text}");
    }

    // Without the diverging setting everything is done and a rerun starts nothing.
    fs::write(
        &file,
        format!("{TINY}[sweep]\n\"train.lr\" = [0.001]\n\"train.seed\" = [0, 1]\n"),
    )
    .unwrap();
    let out = run();
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("nothing to run"), "{text}");
    assert!(!text.contains("start "), "nothing started: {text}");
    assert!(
        text.contains("2 of 2 trials completed; 0 jobs run"),
        "{text}"
    );
}

#[test]
fn sigterm_kills_a_sweep_and_resume_completes_it_with_the_same_weights() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    let long = TINY
        .replace("iterations = 6", "iterations = 1500")
        .replace("checkpoint_every = 3", "checkpoint_every = 5000");
    fs::write(&file, format!("{long}[sweep]\n\"train.seed\" = [0, 1]\n")).unwrap();
    let run = |runs: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ebmlab"))
            .args([
                "run",
                file.to_str().unwrap(),
                "--quiet",
                "--slots",
                "1",
                "--runs",
                runs.to_str().unwrap(),
            ])
            .env("EBMLAB_HEARTBEAT_SECONDS", "0.05")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let killed = dir.path().join("killed");
    let child = run(&killed);
    let db = killed.join("ebmlab.sqlite");
    let query = |sql: &str| common::query_csv(&db, sql);
    let started = Instant::now();
    let steps_so_far = || {
        common::try_query_csv(&db, "SELECT MAX(step) FROM trials WHERE status = 'running'")
            .and_then(|csv| csv.lines().nth(1).and_then(|s| s.parse::<i64>().ok()))
            .unwrap_or(0)
    };
    while steps_so_far() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(130));
    // The trial that was training is killed with a checkpoint; the other finished before
    // or still waits.
    let statuses = query("SELECT status FROM trials ORDER BY overrides");
    assert_eq!(statuses.matches("killed").count(), 1, "{statuses}");
    assert!(
        !statuses.contains("running") && statuses.lines().count() == 3,
        "{statuses}"
    );
    let killed_checkpoints = query(
        "SELECT COUNT(*) FROM checkpoints c JOIN trials t ON t.id = c.trial WHERE t.status = 'killed'",
    );
    assert_eq!(killed_checkpoints, "COUNT(*)\n1\n");

    let out = common::resume("tiny-sweep", &killed);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        query("SELECT status FROM trials"),
        "status\ncompleted\ncompleted\n"
    );
    assert_eq!(
        query("SELECT COUNT(*), COUNT(DISTINCT trial || '/' || step) FROM metrics WHERE name = 'loss'"),
        "COUNT(*),COUNT(DISTINCT trial || '/' || step)\n3000,3000\n"
    );

    let straight = dir.path().join("straight");
    assert!(run(&straight).wait().unwrap().success());
    for seed in 0..2 {
        let spec =
            ebmlab::spec::load_spec_with_env(&file, &[format!("train.seed={seed}")], Vec::new())
                .unwrap()
                .spec;
        let mut spec = spec;
        spec.sweep.clear();
        let weights = |runs: &std::path::Path| {
            fs::read(
                runs.join("tiny-sweep")
                    .join(spec.trial_id())
                    .join("checkpoints/step_0001500.safetensors"),
            )
            .unwrap()
        };
        assert_eq!(weights(&killed), weights(&straight), "seed {seed}");
    }
}

/// A sweep whose trials train long enough to be interrupted (tiny nets, many steps).
fn long_sweep(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("long.toml");
    let long = TINY
        .replace("iterations = 6", "iterations = 1500")
        .replace("checkpoint_every = 3", "checkpoint_every = 100")
        .replace("eval_every = 0", "eval_every = 500");
    fs::write(&file, format!("{long}[sweep]\n\"train.seed\" = [0, 1]\n")).unwrap();
    file
}

#[test]
fn kill_9_of_the_run_and_a_worker_then_resume_gives_the_same_weights_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_sweep(dir.path());
    let killed = dir.path().join("killed");
    let db = killed.join("ebmlab.sqlite");
    let mut child = spawn_run(&file, &killed);
    // Both trials train at once (2 slots), each past a few checkpoints.
    wait_for(
        &db,
        "SELECT COUNT(*) FROM trials t WHERE t.status = 'running' AND \
         (SELECT COUNT(*) FROM checkpoints c WHERE c.trial = t.id) >= 3",
        |v| v == "2",
    );
    let worker = query_one(&db, "SELECT pid FROM trials ORDER BY overrides LIMIT 1");
    kill("-KILL", &[worker.clone(), child.id().to_string()]);
    child.wait().unwrap();
    // The other worker saw its scheduler die: it saves a checkpoint and records `killed`.
    wait_for(
        &db,
        "SELECT COUNT(*) FROM trials WHERE status = 'killed'",
        |v| v != "0",
    );
    let statuses = query_one(
        &db,
        "SELECT group_concat(status, ' ') FROM (SELECT status FROM trials ORDER BY overrides)",
    );
    eprintln!("after kill -9 of worker {worker} and the run: {statuses}");
    assert!(
        statuses == "running killed" || statuses == "killed killed",
        "{statuses}"
    );

    let out = common::resume("tiny-sweep", &killed);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    if statuses.starts_with("running") {
        // Nobody lived to record the first worker's end: its dead pid tells.
        assert!(text.contains(&format!("(pid {worker}) ended")), "{text}");
    }
    assert!(text.contains("2 of 2 trials completed"), "{text}");

    let straight = dir.path().join("straight");
    assert!(spawn_run(&file, &straight).wait().unwrap().success());
    let final_weights = "SELECT group_concat(sha256, ' ') FROM \
        (SELECT sha256 FROM checkpoints WHERE step = 1500 ORDER BY trial)";
    let resumed = query_one(&db, final_weights);
    assert_eq!(resumed.split(' ').count(), 2);
    assert_eq!(
        resumed,
        query_one(&straight.join("ebmlab.sqlite"), final_weights)
    );
    // Every (trial, step, metric) exactly once: 1500 steps x 8 metrics per trial.
    assert_eq!(
        common::query_csv(
            &db,
            "SELECT COUNT(*), COUNT(DISTINCT trial || '/' || step || '/' || name), \
             MIN(step), MAX(step) FROM metrics GROUP BY trial"
        ),
        "COUNT(*),COUNT(DISTINCT trial || '/' || step || '/' || name),MIN(step),MAX(step)\n\
         12000,12000,1,1500\n12000,12000,1,1500\n"
    );
    // The evaluation jobs covered steps 500 and 1000; the trials evaluated 1500.
    assert_eq!(
        query_one(
            &db,
            "SELECT group_concat(n, ' ') FROM (SELECT step || 'x' || COUNT(*) AS n \
             FROM evaluations GROUP BY step ORDER BY step)"
        ),
        "500x2 1000x2 1500x2"
    );
}

#[test]
fn evaluation_jobs_give_the_evaluations_the_trial_would_have_made_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.toml");
    let spec = TINY.replace("eval_every = 0", "eval_every = 2");
    fs::write(&file, &spec).unwrap();
    let runs = |name: &str| dir.path().join(name);
    // Inline: `train` evaluates at steps 2 and 4 itself; `run` leaves them to jobs.
    let out = ebmlab(
        &["train", file.to_str().unwrap(), "--quiet", "--runs"]
            .iter()
            .copied()
            .chain([runs("inline").to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ebmlab(
        &["run", file.to_str().unwrap(), "--quiet", "--runs"]
            .iter()
            .copied()
            .chain([runs("jobs").to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("start  evaluate").count(), 2, "{text}");
    let evaluations = |name: &str| {
        common::query_csv(
            &runs(name).join("ebmlab.sqlite"),
            "SELECT e.step, e.successes, e.mean_min_distance_first_goal, \
             SUM(p.min_distance_second_goal) FROM evaluations e \
             JOIN episodes p ON p.evaluation = e.id GROUP BY e.id ORDER BY e.step",
        )
    };
    let inline = evaluations("inline");
    assert_eq!(inline.lines().count(), 4, "{inline}");
    assert_eq!(inline, evaluations("jobs"));
}

#[test]
fn a_trial_run_as_the_second_job_of_a_worker_equals_it_run_in_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TINY.replace("iterations = 6", "iterations = 30");
    let both = dir.path().join("both.toml");
    fs::write(&both, format!("{spec}[sweep]\n\"train.seed\" = [0, 1]\n")).unwrap();
    let alone = dir.path().join("alone.toml");
    fs::write(&alone, format!("{spec}[sweep]\n\"train.seed\" = [1]\n")).unwrap();
    let run = |file: &std::path::Path, runs: &std::path::Path| {
        let out = ebmlab(&[
            "run",
            file.to_str().unwrap(),
            "--quiet",
            "--slots",
            "1",
            "--runs",
            runs.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let (shared, fresh) = (dir.path().join("shared"), dir.path().join("fresh"));
    run(&both, &shared);
    run(&alone, &fresh);
    let seed1 = {
        let mut spec = load_spec_with_env(&alone, &[], Vec::new()).unwrap().spec;
        spec.sweep.clear();
        spec.train.seed = 1;
        spec.trial_id()
    };
    let file = |runs: &std::path::Path, name: &str| {
        fs::read(runs.join("tiny-sweep").join(&seed1).join(name)).unwrap()
    };
    // One worker process ran both trials, this one second.
    let log = String::from_utf8(file(&shared, "worker.log")).unwrap();
    let line = log.lines().find(|l| l.starts_with("worker pid")).unwrap();
    assert!(line.contains(" job 2: "), "{log}");
    let pid = line.split_whitespace().nth(2).unwrap().to_owned();
    let others: Vec<String> = fs::read_dir(shared.join("tiny-sweep"))
        .unwrap()
        .map(|e| e.unwrap().path().join("worker.log"))
        .filter(|p| p.exists())
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        others
            .iter()
            .any(|l| l.contains(&format!("worker pid {pid} job 1: "))),
        "{others:?}"
    );
    for name in [
        "checkpoints/step_0000030.safetensors",
        "checkpoints/step_0000030.optim.safetensors",
        "episodes.csv",
    ] {
        assert_eq!(file(&shared, name), file(&fresh, name), "{name}");
    }
}

#[test]
fn sigterm_stops_a_running_evaluation_job_within_a_step_and_records_nothing_of_it() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slow-eval.toml");
    // An evaluation of 10 episodes with 65,536 DFO samples a step takes 10-20 s on 2 cores
    // (a fraction of a second per step): the training job makes its final one itself, then
    // the evaluation job of step 3 runs.
    let spec = TINY.replace("eval_every = 0", "eval_every = 3").replace(
        "episodes = 4\nsamples = 64",
        "episodes = 10\nsamples = 65536",
    );
    fs::write(&file, &spec).unwrap();
    let runs = dir.path().join("runs");
    let mut child = KillOnDrop(spawn_run(&file, &runs));
    let trial = ebmlab::spec::load_spec_with_env(&file, &[], Vec::new())
        .unwrap()
        .spec
        .trial_id();
    let log = runs
        .join("tiny-sweep")
        .join(&trial)
        .join("evaluate_step_0000003.log");
    let started = Instant::now();
    while !log.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no evaluation job started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Started (a serving worker loads a checkpoint in milliseconds), far from its end:
    // stopped before its first step or after, the evaluation must end unrecorded.
    std::thread::sleep(Duration::from_millis(200));
    kill("-TERM", &[child.0.id().to_string()]);
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cancelled before the evaluation ended"),
        "the evaluation ran to its end: {text}"
    );
    let db = runs.join("ebmlab.sqlite");
    assert_eq!(
        query_one(&db, "SELECT GROUP_CONCAT(step) FROM evaluations"),
        "6",
        "only the training's own final evaluation"
    );
    // `resume` evaluates the checkpoint the stopped job left.
    let out = common::resume("tiny-sweep", &runs);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("evaluate"), "{}", stdout(&out));
    let steps = query_one(
        &db,
        "SELECT GROUP_CONCAT(step) FROM (SELECT step FROM evaluations ORDER BY step)",
    );
    assert_eq!(steps, "\"3,6\"", "CSV quotes the list");
}

/// A child process killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
