//! Demonstration files: generate -> validate round trips, and every malformed case.

mod common;

use std::fs;
use std::path::Path;

use common::{ebmlab, stderr, stdout};
use ebmlab::task::particle::{parse_demo, read_demo, write_demo, ParticleDemo};
use serde_json::Value;

fn generate(dir: &Path, episodes: usize, extra: &[&str]) {
    let episodes = episodes.to_string();
    let mut args = vec![
        "data",
        "generate",
        "--task",
        "particle",
        "--episodes",
        &episodes,
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = ebmlab(&args);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
}

fn validate_json(dir: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["data", "validate", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = ebmlab(&args);
    let report: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)));
    (out.status.code(), report)
}

#[test]
fn generated_demos_replay_without_drift() {
    for (n_dim, multimodal) in [("2", false), ("16", false), ("3", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = vec!["--n-dim", n_dim, "--seed", "7"];
        if multimodal {
            extra.push("--multimodal");
        }
        generate(dir.path(), 40, &extra);
        let (code, report) = validate_json(dir.path(), &[]);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(report["episodes"], 40);
        assert_eq!(report["max_position_drift"], 0.0);
        assert_eq!(report["max_velocity_drift"], 0.0);
        assert!(report["success_rate"].as_f64().unwrap() >= 0.95, "{report}");

        let demo = read_demo(&dir.path().join("traj_000000.json")).unwrap();
        assert_eq!(demo.n_dim(), n_dim.parse::<usize>().unwrap());
        assert_eq!(demo.actions.len(), 50);
        assert_eq!(
            demo.positions.len(),
            51,
            "initial state plus one per action"
        );
        assert_eq!(demo.multimodal, multimodal);
    }
}

#[test]
fn same_seed_same_files_other_seed_other_files() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(a.path(), 3, &["--seed", "1"]);
    generate(b.path(), 3, &["--seed", "1"]);
    generate(c.path(), 3, &["--seed", "2"]);
    let read = |d: &Path| fs::read_to_string(d.join("traj_000002.json")).unwrap();
    assert_eq!(read(a.path()), read(b.path()));
    assert_ne!(read(a.path()), read(c.path()));
}

#[test]
fn validate_reports_drift_and_honours_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 5, &[]);
    let file = dir.path().join("traj_000003.json");
    let mut record: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let x = record["trajectory"]["positions"][10][1].as_f64().unwrap();
    record["trajectory"]["positions"][10][1] = (x + 0.001).into();
    fs::write(&file, record.to_string()).unwrap();

    let (code, report) = validate_json(dir.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    let drift = report["max_position_drift"].as_f64().unwrap();
    assert!((drift - 0.001).abs() < 1e-5, "{drift}");
    assert_eq!(report["passed"], false);

    let (code, report) = validate_json(dir.path(), &["--tolerance", "0.01"]);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn files_without_a_final_state_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2, &[]);
    let file = dir.path().join("traj_000000.json");
    let mut record: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    for key in ["positions", "velocities"] {
        record["trajectory"][key].as_array_mut().unwrap().pop();
    }
    fs::write(&file, record.to_string()).unwrap();
    let (code, report) = validate_json(dir.path(), &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["max_position_drift"], 0.0);
}

fn sample_demo() -> ParticleDemo {
    ParticleDemo {
        seed: Some(9),
        positions: vec![vec![0.1, 0.2], vec![0.15, 0.25], vec![0.2, 0.3]],
        velocities: vec![vec![0.0, 0.0], vec![0.5, 0.5], vec![0.6, 0.6]],
        actions: vec![vec![0.9, 0.8], vec![0.7, 0.6]],
        first_goal: vec![0.3, 0.4],
        second_goal: vec![0.5, 0.6],
        multimodal: false,
    }
}

#[test]
fn write_then_read_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    let demo = sample_demo();
    write_demo(&path, &demo, Some(true)).unwrap();
    assert_eq!(read_demo(&path).unwrap(), demo);
}

/// The sample demo as JSON text, edited by `edit`.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    write_demo(&path, &sample_demo(), None).unwrap();
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn malformed_files_name_the_file_and_the_field() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing field",
            edited(|v| {
                v.as_object_mut().unwrap().remove("actions");
            }),
            "actions",
            "is missing",
        ),
        (
            "missing nested field",
            edited(|v| {
                v["trajectory"]
                    .as_object_mut()
                    .unwrap()
                    .remove("velocities");
            }),
            "trajectory.velocities",
            "is missing",
        ),
        (
            "wrong length",
            edited(|v| {
                let row = v["trajectory"]["positions"][0].clone();
                for _ in 0..3 {
                    v["trajectory"]["positions"]
                        .as_array_mut()
                        .unwrap()
                        .push(row.clone());
                }
            }),
            "trajectory.positions",
            "has 6 states for 2 actions",
        ),
        (
            "velocities shorter than positions",
            edited(|v| {
                v["trajectory"]["velocities"].as_array_mut().unwrap().pop();
            }),
            "trajectory.velocities",
            "has 2 states but trajectory.positions has 3",
        ),
        (
            "NaN as Python writes it",
            edited(|v| v["actions"][1][0] = 12345.0.into()).replace("12345.0", "NaN"),
            "actions[1][0]",
            "is NaN",
        ),
        (
            "Infinity as Python writes it",
            edited(|v| v["trajectory"]["velocities"][2][1] = 12345.0.into())
                .replace("12345.0", "-Infinity"),
            "trajectory.velocities[2][1]",
            "not a finite float32",
        ),
        (
            "ragged rows",
            edited(|v| v["trajectory"]["positions"][1] = serde_json::json!([0.1, 0.2, 0.3])),
            "trajectory.positions[1]",
            "has 3 values, expected 2",
        ),
        (
            "goal dimension mismatch",
            edited(|v| v["second_goal_position"] = serde_json::json!([0.1, 0.2, 0.3])),
            "second_goal_position",
            "has 3 values, expected 2",
        ),
        (
            "wrong type",
            edited(|v| v["actions"][0][1] = "fast".into()),
            "actions[0][1]",
            "invalid type: string",
        ),
        (
            "not JSON",
            "positions: [1, 2]".to_owned(),
            "(file)",
            "not valid JSON",
        ),
        ("empty file", String::new(), "(file)", "not valid JSON"),
    ];
    for (name, text, field, problem) in cases {
        let path = Path::new("demos/bad_episode.json");
        let err = parse_demo(path, &text).expect_err(name);
        assert_eq!(err.file, path, "{name}");
        assert_eq!(err.field, field, "{name}: {err}");
        assert!(err.problem.contains(problem), "{name}: {err}");
        let shown = err.to_string();
        assert!(
            shown.contains("demos/bad_episode.json") && shown.contains(field),
            "{shown}"
        );
    }
}

#[test]
fn validate_lists_every_bad_file_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 4, &[]);
    fs::write(dir.path().join("broken_a.json"), "{ not json").unwrap();
    let no_actions = edited(|v| {
        v.as_object_mut().unwrap().remove("actions");
    });
    fs::write(dir.path().join("broken_b.json"), no_actions).unwrap();
    fs::write(dir.path().join("notes.txt"), "not a demo, ignored").unwrap();

    let (code, report) = validate_json(dir.path(), &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["files"], 6);
    assert_eq!(report["episodes"], 4);
    assert_eq!(report["success_rate"], 1.0);
    let invalid = report["invalid_files"].as_array().unwrap();
    assert_eq!(invalid.len(), 2);
    assert!(invalid[0]["error"]
        .as_str()
        .unwrap()
        .contains("broken_a.json"));
    assert!(invalid[1]["error"]
        .as_str()
        .unwrap()
        .contains("field `actions`: is missing"));

    let out = ebmlab(&["data", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("broken_a.json") && err.contains("broken_b.json"),
        "{err}"
    );
    assert!(stdout(&out).contains("FAILED"));
}

#[test]
fn validate_refuses_missing_or_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out = ebmlab(&["data", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds no .json files"),
        "{}",
        stderr(&out)
    );
    let out = ebmlab(&["data", "validate", "/nonexistent/demos"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/demos"));
}

#[test]
fn plots_are_written_one_png_per_episode() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3, &["--plots"]);
    let mut pngs: Vec<_> = fs::read_dir(dir.path().join("plots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 3);
    assert!(pngs[0].ends_with("traj_000000.png"));
    for png in pngs {
        let bytes = fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", png.display());
        assert!(bytes.len() > 5_000, "{} looks empty", png.display());
    }
}

#[test]
fn generate_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = ebmlab(&[
        "data",
        "generate",
        "--task",
        "pendulum",
        "--episodes",
        "2",
        "--out",
        d,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pendulum"));
    let out = ebmlab(&[
        "data",
        "generate",
        "--episodes",
        "2",
        "--n-dim",
        "0",
        "--out",
        d,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("n_dim"), "{}", stderr(&out));
}
