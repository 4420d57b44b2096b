//! One trial end to end on a tiny budget: outputs, evaluation reproducibility, demo folders
//! against oracle-in-the-loop data, and a diverging loss.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::{ebmlab, stderr, stdout};
use ebmlab::spec::{load_spec_with_env, Spec};
use ebmlab::trial::{run_pack, run_trial, NoObserver, TrialObserver, TrialOptions, TrialStop};

/// A spec small enough to train in a second or two.
fn tiny_spec(dir: &Path, extra: &str) -> Spec {
    let file = dir.join("tiny.toml");
    fs::write(
        &file,
        format!(
            "name = \"tiny\"\n\
             [data]\ndemos = 20\nseed = 3\n\
             [policy]\nhidden = 32\n\
             [train]\niterations = 30\nbatch_size = 32\ncheckpoint_every = 10\neval_every = 20\nlog_every = 5\n\
             [train.negatives]\nkind = \"langevin\"\ncount = 4\nsteps = 5\n\
             [eval]\nepisodes = 6\nsamples = 128\n\
             [resources]\ndevice = \"cpu\"\n{extra}"
        ),
    )
    .unwrap();
    load_spec_with_env(&file, &[], Vec::new()).unwrap().spec
}

fn cancel() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn a_trial_writes_its_outputs_and_evaluates_reproducibly() {
    let _torch = common::torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let report = run_trial(
        &spec,
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap();
    let trial = runs.join("tiny").join(spec.trial_id());
    assert_eq!(report.dir, trial);
    for file in [
        "config.toml",
        "metrics.csv",
        "evaluations.csv",
        "episodes.csv",
        "summary.json",
    ] {
        assert!(trial.join(file).exists(), "{file} missing");
    }
    for step in [10, 20, 30] {
        assert!(trial
            .join(format!("checkpoints/step_{step:07}.safetensors"))
            .exists());
    }
    // Metrics every 5 steps; evaluations at 20 and the final 30.
    let metrics = fs::read_to_string(trial.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 6, "{metrics}");
    assert!(metrics.starts_with("step,wall_seconds,lr,loss,info_nce,grad_penalty"));
    let evals = fs::read_to_string(trial.join("evaluations.csv")).unwrap();
    assert_eq!(steps_of(&evals), ["20", "30"]);
    assert_eq!(report.final_evaluation.episodes, 6);
    // The written config is the resolved spec.
    let written: Spec =
        toml::from_str(&fs::read_to_string(trial.join("config.toml")).unwrap()).unwrap();
    assert_eq!(written, spec);

    // Running the same spec again does nothing new.
    let again = run_trial(
        &spec,
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(again.final_evaluation, report.final_evaluation);
    assert_eq!(
        fs::read_to_string(trial.join("evaluations.csv")).unwrap(),
        evals
    );

    // `ebmlab eval` of the trial on 8 episodes into `out`, with `extra` arguments: its
    // summary (with --json) and its per-episode rows.
    let run_eval = |out: &str, extra: &[&str]| {
        let out_dir = dir.path().join(out);
        let mut args = vec![
            "eval",
            trial.to_str().unwrap(),
            "--episodes",
            "8",
            "--device",
            "cpu",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = ebmlab(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            serde_json::from_str::<serde_json::Value>(&stdout(&o)).ok(),
            fs::read_to_string(out_dir.join("episodes.csv")).unwrap(),
        )
    };
    // Twice on the trial: same success, same per-episode rows.
    let (s1, rows1) = run_eval("e1", &["--json", "--samples", "256"]);
    let (s2, rows2) = run_eval("e2", &["--json", "--samples", "256"]);
    let (s1, s2) = (s1.unwrap(), s2.unwrap());
    assert_eq!(rows1, rows2);
    assert_eq!(rows1.lines().count(), 9);
    for key in [
        "episodes",
        "successes",
        "success_rate",
        "ci_low",
        "ci_high",
        "step",
    ] {
        assert_eq!(s1[key], s2[key], "{key}");
    }
    assert_eq!(s1["step"], 30);
    assert_eq!(s1["episodes"], 8);
    // Another seed faces other episodes.
    let (_, rows3) = run_eval("e3", &["--samples", "256", "--seed", "77"]);
    assert_ne!(rows3, rows1);
    // `--set eval.samples=256` acts as `--samples 256`, and the settings are written beside
    // the rows; `--set` comes after the flags.
    let (_, rows4) = run_eval("e4", &["--samples", "64", "--set", "eval.samples=256"]);
    assert_eq!(rows4, rows1);
    let (_, rows64) = run_eval("e5", &["--samples", "64"]);
    assert_ne!(
        rows64, rows1,
        "64 samples act otherwise, so the --set above counted"
    );
    let used: toml::Table = fs::read_to_string(dir.path().join("e4/eval.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(used["samples"].as_integer(), Some(256));
    assert_eq!(used["episodes"].as_integer(), Some(8));
    // An evaluation is never written over unasked: `--out` that holds one is refused
    // (exit 2, naming the folder) unless `--overwrite`, and without `--out` each
    // evaluation of a step gets a folder of its own.
    let e1 = dir.path().join("e1");
    let eval_into_e1 = |extra: &[&str]| {
        let mut args = vec!["eval", trial.to_str().unwrap(), "--episodes", "8"];
        args.extend_from_slice(&["--device", "cpu", "--samples", "64", "--out"]);
        args.push(e1.to_str().unwrap());
        args.extend_from_slice(extra);
        ebmlab(&args)
    };
    let o = eval_into_e1(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("e1") && stderr(&o).contains("--overwrite"));
    assert_eq!(fs::read_to_string(e1.join("episodes.csv")).unwrap(), rows1);
    let o = eval_into_e1(&["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(e1.join("episodes.csv")).unwrap(), rows64);
    for _ in 0..2 {
        let args = ["--episodes", "8", "--device", "cpu", "--samples", "64"];
        let o = ebmlab(&[&["eval", trial.to_str().unwrap()][..], &args].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for folder in ["step_0000030", "step_0000030-2"] {
        let rows = trial.join("eval").join(folder).join("episodes.csv");
        assert_eq!(fs::read_to_string(rows).unwrap(), rows64, "{folder}");
    }
    // A misspelt key, a key outside [eval] and a bad value are refused, named.
    for (item, expected) in [
        ("eval.itres=5", "eval.itres"),
        ("train.lr=0.1", "eval.*"),
        (
            "eval.temperature=0",
            "eval.temperature must be a positive number",
        ),
        ("eval.iters=many", "eval.iters=many"),
    ] {
        let o = ebmlab(&["eval", trial.to_str().unwrap(), "--set", item]);
        assert_eq!(o.status.code(), Some(2), "{item}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{item}: {}", stderr(&o));
    }
}

#[test]
fn a_demo_folder_trains_exactly_like_the_oracle_in_the_loop() {
    let _torch = common::torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let demos = dir.path().join("demos");
    let o = ebmlab(&[
        "data",
        "generate",
        "--episodes",
        "20",
        "--seed",
        "3",
        "--out",
        demos.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = dir.path().join("runs");
    let oracle = tiny_spec(dir.path(), "");
    let mut from_folder = oracle.clone();
    from_folder.data.path = Some(demos.to_str().unwrap().to_owned());
    assert_ne!(oracle.trial_id(), from_folder.trial_id());
    let a = run_trial(
        &oracle,
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap();
    let b = run_trial(
        &from_folder,
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap();
    let weights = |report: &ebmlab::trial::TrialReport| {
        fs::read(report.dir.join("checkpoints/step_0000030.safetensors")).unwrap()
    };
    assert_eq!(weights(&a), weights(&b), "same demos, same training");
    assert_eq!(a.final_evaluation.successes, b.final_evaluation.successes);
    assert_eq!(
        fs::read_to_string(a.dir.join("episodes.csv")).unwrap(),
        fs::read_to_string(b.dir.join("episodes.csv")).unwrap()
    );
}

#[test]
fn a_diverging_loss_stops_the_trial_and_keeps_the_last_good_checkpoint() {
    let _torch = common::torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec(dir.path(), "");
    let mut spec = spec;
    spec.train.lr = 1e30;
    spec.train.checkpoint_every = 1;
    spec.train.negatives.kind = ebmlab::policy::ebm::NegativeKind::Uniform;
    let runs = dir.path().join("runs");
    let err = run_trial(
        &spec,
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap_err();
    let stop = err.downcast_ref::<TrialStop>().expect("a TrialStop");
    let TrialStop::NonFiniteLoss {
        step, last_good, ..
    } = stop
    else {
        panic!("wrong stop: {stop}");
    };
    assert_eq!(*last_good, Some(step - 1));
    let ckpts = runs.join("tiny").join(spec.trial_id()).join("checkpoints");
    assert!(ckpts
        .join(format!("step_{:07}.safetensors", step - 1))
        .exists());
    assert!(!ckpts.join(format!("step_{step:07}.safetensors")).exists());
    assert!(
        err.to_string().contains(&format!("at step {step}")),
        "{err}"
    );
}

/// A pack reads an iteration's metrics while the next one runs (one iteration late) except
/// where weights are saved or evaluated: a member that diverges in between leaves the
/// pack from the iteration already queued, and the other member's metrics stay its own.
#[test]
fn a_member_diverging_between_checkpoints_leaves_the_pack_and_the_other_trains_as_alone() {
    let _torch = common::torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut good = tiny_spec(dir.path(), "");
    good.train.eval_every = 0;
    good.train.log_every = 1;
    good.train.negatives.kind = ebmlab::policy::ebm::NegativeKind::Uniform;
    let mut diverging = good.clone();
    diverging.train.lr = 1e30;
    diverging.train.seed = 1;
    let runs = dir.path().join("pack");
    let mut observers = [NoObserver, NoObserver];
    let [a, b] = &mut observers;
    let mut observers: Vec<&mut dyn TrialObserver> = vec![a, b];
    // The diverging member first: its leaving moves the other one's position.
    let results = run_pack(
        &[&diverging, &good],
        &runs,
        &TrialOptions::default(),
        &cancel(),
        &mut observers,
    );
    let err = results[0].as_ref().unwrap_err();
    let Some(TrialStop::NonFiniteLoss { step, .. }) = err.downcast_ref::<TrialStop>() else {
        panic!("wrong outcome: {err:#}");
    };
    assert_ne!(
        step % good.train.checkpoint_every,
        0,
        "diverged at a step read late"
    );
    let report = results[1].as_ref().expect("the other member completes");
    assert_eq!(report.final_evaluation.step, 30);

    let alone = dir.path().join("alone");
    run_trial(
        &good,
        &alone,
        &TrialOptions::default(),
        &cancel(),
        &mut NoObserver,
    )
    .unwrap();
    let losses = |runs: &Path| -> Vec<(u64, f64)> {
        let csv = fs::read_to_string(runs.join("tiny").join(good.trial_id()).join("metrics.csv"))
            .unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let loss = header.iter().position(|&c| c == "loss").unwrap();
        csv.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].parse().unwrap(), f[loss].parse().unwrap())
            })
            .collect()
    };
    let (packed, solo) = (losses(&runs), losses(&alone));
    let steps: Vec<u64> = packed.iter().map(|r| r.0).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<u64>>());
    for ((step, p), (_, s)) in packed.iter().zip(&solo) {
        assert!(
            (p - s).abs() <= 1e-4 * s.abs().max(1.0),
            "step {step}: {p} packed, {s} alone"
        );
    }
}

#[test]
fn train_refuses_a_spec_with_a_sweep_and_prints_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    fs::write(&file, "name = \"s\"\n[sweep]\n\"train.seed\" = [0, 1]\n").unwrap();
    let o = ebmlab(&[
        "train",
        file.to_str().unwrap(),
        "--runs",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ebmlab run"), "{}", stderr(&o));
    fs::write(&file, "name = \"s\"\n").unwrap();
    let o = ebmlab(&[
        "train",
        file.to_str().unwrap(),
        "--dry-run",
        "--set",
        "train.iterations=7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("iterations = 7"));
}

#[test]
fn sigterm_saves_a_checkpoint_and_the_continued_trial_equals_an_uninterrupted_one() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join("long.toml");
    fs::write(
        &spec_file,
        "name = \"long\"\n[data]\ndemos = 20\n[policy]\nhidden = 32\n\
         [train]\niterations = 400\nbatch_size = 32\ncheckpoint_every = 1000\neval_every = 0\nlog_every = 1\n\
         [train.negatives]\nkind = \"langevin\"\ncount = 4\nsteps = 10\n\
         [eval]\nepisodes = 4\nsamples = 64\n[resources]\ndevice = \"cpu\"\nthreads = 1\n",
    )
    .unwrap();
    let spec = load_spec_with_env(&spec_file, &[], Vec::new())
        .unwrap()
        .spec;
    let interrupted = dir.path().join("interrupted");
    let straight = dir.path().join("straight");
    let train = |runs: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ebmlab"))
            .args([
                "train",
                spec_file.to_str().unwrap(),
                "--quiet",
                "--runs",
                runs.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Stop it with SIGTERM once it has trained a little.
    let child = train(&interrupted);
    let metrics = interrupted
        .join("long")
        .join(spec.trial_id())
        .join("metrics.csv");
    let started = Instant::now();
    while fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpts = interrupted
        .join("long")
        .join(spec.trial_id())
        .join("checkpoints");
    let saved = ebmlab::checkpoint::saved_steps(&ckpts).unwrap();
    assert_eq!(
        saved.len(),
        1,
        "one checkpoint, at the step it stopped: {saved:?}"
    );
    assert!(saved[0] > 0 && saved[0] < 400, "{saved:?}");
    let db = interrupted.join("ebmlab.sqlite");
    let query = |sql: &str| common::query_csv(&db, sql);
    assert_eq!(query("SELECT status FROM trials"), "status\nkilled\n");

    // Continue it, and run the same trial without interruption elsewhere.
    assert!(train(&interrupted).wait().unwrap().success());
    assert!(train(&straight).wait().unwrap().success());
    let last = |runs: &Path| {
        fs::read(
            runs.join("long")
                .join(spec.trial_id())
                .join("checkpoints/step_0000400.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(
        last(&interrupted),
        last(&straight),
        "resumed weights differ"
    );
    // Every step has exactly one metrics row.
    let rows = fs::read_to_string(&metrics).unwrap();
    let steps: Vec<u64> = rows
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=400).collect::<Vec<u64>>());
    assert_eq!(
        query("SELECT status, attempt FROM trials"),
        "status,attempt\ncompleted,2\n"
    );
    assert_eq!(
        query("SELECT COUNT(*), COUNT(DISTINCT step), MIN(step), MAX(step) FROM metrics WHERE name = 'loss'"),
        "COUNT(*),COUNT(DISTINCT step),MIN(step),MAX(step)\n400,400,1,400\n"
    );
}

#[test]
fn a_trial_stopped_in_its_final_evaluation_continues_with_that_evaluation_not_past_its_end() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    // The final evaluation takes several seconds (65,536 DFO samples a step).
    let spec_text = "name = \"final\"\n[data]\ndemos = 10\n[policy]\nhidden = 16\n\
         [train]\niterations = 6\nbatch_size = 16\ncheckpoint_every = 3\neval_every = 0\nlog_every = 1\n\
         [train.negatives]\nkind = \"uniform\"\ncount = 8\n\
         [eval]\nepisodes = 10\nsamples = 65536\n[resources]\ndevice = \"cpu\"\n";
    // Stopped by SIGTERM (the evaluation stops within a step: exit 130) or killed.
    for signal in ["TERM", "KILL"] {
        let dir = tempfile::tempdir().unwrap();
        let spec_file = dir.path().join("final.toml");
        fs::write(&spec_file, spec_text).unwrap();
        let spec = load_spec_with_env(&spec_file, &[], Vec::new())
            .unwrap()
            .spec;
        let runs = dir.path().join("runs");
        let trial_dir = runs.join("final").join(spec.trial_id());
        let train = || {
            Command::new(env!("CARGO_BIN_EXE_ebmlab"))
                .args(["train", spec_file.to_str().unwrap(), "--quiet", "--runs"])
                .arg(&runs)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        // Until `child` ends, or it is killed after `limit` (a failure).
        let wait = |mut child: std::process::Child, limit: u64| {
            let started = Instant::now();
            loop {
                if child.try_wait().unwrap().is_some() {
                    return child.wait_with_output().unwrap();
                }
                if started.elapsed() > Duration::from_secs(limit) {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    panic!("SIG{signal}: the trial did not end within {limit} s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        // Stopped once its last checkpoint is written: in its final evaluation.
        let mut child = train();
        let last = trial_dir.join("checkpoints/step_0000006.sha256");
        let started = Instant::now();
        while !last.exists() {
            if started.elapsed() > Duration::from_secs(120) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("training did not end");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = wait(child, 300);
        if signal == "TERM" {
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("cancelled at step 6; checkpoint saved"),
                "{}",
                stderr(&out)
            );
        }
        assert!(!trial_dir.join("summary.json").exists(), "stopped too late");

        // Continued, it only evaluates (before, it trained on past step 6 and never ended).
        let out = wait(train(), 300);
        assert!(out.status.success(), "{}", stderr(&out));
        let metrics = fs::read_to_string(trial_dir.join("metrics.csv")).unwrap();
        assert_eq!(
            steps_of(&metrics),
            ["1", "2", "3", "4", "5", "6"],
            "SIG{signal}: {metrics}"
        );
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(trial_dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["final_evaluation"]["step"], 6);
        assert_eq!(summary["resumed_from"], 6);
        // Its training was all the stopped run's: its time and rate come from that run's log.
        let seconds = summary["train_seconds"].as_f64().unwrap();
        let rate = summary["iterations_per_second"].as_f64().unwrap();
        assert!(
            seconds > 0.0 && (rate * seconds - 6.0).abs() < 1e-6,
            "{summary}"
        );
        if signal == "KILL" {
            // Stopped after its final evaluation was written but before its summary: the
            // evaluation is made again, and its row is not doubled.
            fs::remove_file(trial_dir.join("summary.json")).unwrap();
            let out = wait(train(), 300);
            assert!(out.status.success(), "{}", stderr(&out));
            let rows = fs::read_to_string(trial_dir.join("evaluations.csv")).unwrap();
            assert_eq!(rows.lines().count(), 2, "a header and step 6 once: {rows}");
        }
    }
}

/// The first column (the step) of each row of a trial's CSV log.
fn steps_of(csv: &str) -> Vec<&str> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect()
}
