//! `ebmlab report`: the numbers in the report are the database's, intervals are Wilson's,
//! and unfinished trials are marked rather than counted.

mod common;

use std::fs;

use common::{ebmlab, query_csv, stderr, stdout};

const TINY: &str = "name = \"tiny-report\"\n\
    [data]\ndemos = 10\n\
    [policy]\nhidden = 16\n\
    [train]\niterations = 6\nbatch_size = 16\ncheckpoint_every = 3\neval_every = 3\nlog_every = 1\n\
    [train.negatives]\nkind = \"uniform\"\ncount = 8\n\
    [eval]\nepisodes = 6\nsamples = 64\n\
    [resources]\ndevice = \"cpu\"\n";

/// Wilson's 95% interval, written out independently of the library.
fn wilson(successes: f64, n: f64) -> (f64, f64) {
    let z: f64 = 1.959_963_984_540_054;
    let p = successes / n;
    let center = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z * z / n;
    ((center - half) / scale, (center + half) / scale)
}

#[test]
fn report_numbers_are_the_databases_and_unfinished_trials_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let db = runs.join("ebmlab.sqlite");
    let spec = dir.path().join("s.toml");
    fs::write(
        &spec,
        format!(
            "{TINY}[sweep]\n\"train.seed\" = [0, 1, 2]\n\
             [[trials]]\n\"policy.kind\" = \"ebm\"\n\
             [[trials]]\n\"policy.kind\" = \"mse\"\n\"policy.hidden\" = 256\n"
        ),
    )
    .unwrap();
    let run = |file: &std::path::Path| {
        ebmlab(&[
            "run",
            file.to_str().unwrap(),
            "--quiet",
            "--runs",
            runs.to_str().unwrap(),
        ])
    };
    let out = run(&spec);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // A diverging setting of the same experiment fails.
    let failing = dir.path().join("f.toml");
    fs::write(&failing, format!("{TINY}[sweep]\n\"train.lr\" = [1e30]\n")).unwrap();
    assert_eq!(run(&failing).status.code(), Some(1));
    // One trial is made to look as if it were still running.
    let running = query_csv(
        &db,
        "SELECT id FROM trials WHERE overrides LIKE '%mse%' AND overrides LIKE '%\"train.seed\":2%'",
    );
    let running = running.lines().nth(1).unwrap().to_owned();
    ebmlab::store::block_on(async {
        let store = ebmlab::store::Store::open(&db.clone().into())
            .await
            .unwrap();
        sqlx::query("UPDATE trials SET status = 'running', step = 4 WHERE id = ?")
            .bind(&running)
            .execute(store.pool())
            .await
            .unwrap();
    });

    let out_dir = dir.path().join("report");
    let out = common::report(&db, &["tiny-report"], &out_dir, 4);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let settings: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(settings.len(), 3, "ebm, mse and the diverging setting");
    for row in &settings {
        let policy = row["policy"].as_str().unwrap();
        let setting = row["setting"].as_str().unwrap();
        if setting.contains("train.lr") {
            assert_eq!(row["completed"], 0);
            assert!(row["success_rate"].is_null());
            continue;
        }
        // The same pool, straight from the episodes table.
        let sql = format!(
            "SELECT SUM(p.success), COUNT(*) FROM episodes p \
             JOIN evaluations e ON p.evaluation = e.id \
             JOIN trials t ON t.experiment = e.experiment AND t.id = e.trial \
             WHERE t.status = 'completed' AND e.step = t.iterations \
             AND t.overrides LIKE '%\"policy.kind\":\"{policy}\"%'"
        );
        let pooled = query_csv(&db, &sql);
        let values: Vec<f64> = pooled
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(row["successes"].as_f64().unwrap(), values[0], "{policy}");
        assert_eq!(row["episodes"].as_f64().unwrap(), values[1], "{policy}");
        let expected_trials = if policy == "mse" { 2.0 } else { 3.0 };
        assert_eq!(
            values[1],
            6.0 * expected_trials,
            "{policy}: completed trials only"
        );
        let (lo, hi) = wilson(values[0], values[1]);
        assert!((row["ci_low"].as_f64().unwrap() - lo).abs() < 1e-12);
        assert!((row["ci_high"].as_f64().unwrap() - hi).abs() < 1e-12);
        assert_eq!(row["success_rate"].as_f64().unwrap(), values[0] / values[1]);
        // The best checkpoint is the best evaluation of the setting's trials.
        let best = query_csv(
            &db,
            &format!(
                "SELECT MAX(e.success_rate) FROM evaluations e JOIN trials t ON t.id = e.trial \
                 WHERE t.overrides LIKE '%\"policy.kind\":\"{policy}\"%'"
            ),
        );
        let best: f64 = best.lines().nth(1).unwrap().parse().unwrap();
        assert_eq!(row["best"][2].as_f64().unwrap(), best);
        // The Markdown table shows the same numbers.
        let markdown = fs::read_to_string(out_dir.join("report.md")).unwrap();
        let cell = format!(
            "{:.1}% [{:.1}, {:.1}] of {} episodes",
            100.0 * values[0] / values[1],
            100.0 * lo,
            100.0 * hi,
            values[1]
        );
        assert!(markdown.contains(&cell), "{cell} not in\n{markdown}");
    }
    // IBC's number sits beside the 2-D MSE setting, whose network (width 256, depth 2) is
    // that of IBC's 5%; the same setting 16 wide would have none.
    let mse = settings.iter().find(|r| r["policy"] == "mse").unwrap();
    assert_eq!(mse["variant"], "width 256, depth 2");
    assert_eq!(mse["ibc"]["success_rate"].as_f64(), Some(0.05));

    let markdown = fs::read_to_string(out_dir.join("report.md")).unwrap();
    // Unfinished trials are named once per setting, each with its state.
    assert!(
        markdown.contains("policy.hidden=256 policy.kind=mse: not in the success column: ")
            && markdown.contains(&format!("trial {running} is RUNNING at step")),
        "{markdown}"
    );
    assert_eq!(
        markdown.matches("not in the success column").count(),
        2,
        "{markdown}"
    );
    assert!(markdown.contains("is FAILED at step"), "{markdown}");
    assert!(markdown.contains("loss became"), "{markdown}");
    assert!(markdown.contains("| **running** |") && markdown.contains("| **failed** |"));
    // Replaying the best checkpoint's evaluation gives back the recorded outcomes.
    assert!(
        markdown.contains("replayed from its checkpoint gives the recorded"),
        "{markdown}"
    );
    // Every trial acts in 2-D, and the one numeric key that differs (the width) has one
    // value per method: no success-against figure of lone points.
    assert!(!markdown.contains("Success against"), "{markdown}");
    let html = fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("<td class=\"unfinished\">running</td>"));
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        markdown.matches("![").count()
    );
    for entry in fs::read_dir(out_dir.join("figures")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
    }

    // Side by side with another experiment; an unknown one is an error naming it.
    let other = dir.path().join("o.toml");
    // (It sweeps a number, so one method has two values of it: a success-against figure.)
    let other_spec = TINY.replace("tiny-report", "tiny-other");
    let other_spec = format!("{other_spec}[sweep]\n\"train.batch_size\" = [8, 16]\n");
    fs::write(&other, other_spec).unwrap();
    assert!(run(&other).status.success());
    let both = dir.path().join("both");
    let out = common::report(&db, &["tiny-report", "tiny-other"], &both, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    let markdown = fs::read_to_string(both.join("report.md")).unwrap();
    assert!(
        markdown.contains("## All experiments")
            && markdown.contains("| tiny-other: train.batch_size=8 |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("Success against train.batch_size"),
        "{markdown}"
    );
    let out = common::report(&db, &["nope"], &both, 0);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no trials of experiment `nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_baselines_table_holds_the_published_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.sqlite");
    ebmlab::store::block_on(ebmlab::store::Store::open(&db.clone().into())).unwrap();
    assert_eq!(
        query_csv(
            &db,
            "SELECT method, variant, steps, episodes, success_rate FROM baselines \
             WHERE source = 'IBC README' ORDER BY method"
        ),
        "method,variant,steps,episodes,success_rate\nebm,langevin,10000,50,0.96\n\
         mse,\"width 256, depth 2\",10000,20,0.05\n"
    );
    // Fig. 6's 18 readings carry their reading error, the printed numbers none.
    assert_eq!(
        query_csv(
            &db,
            "SELECT source, reading_error, COUNT(*) AS n FROM baselines \
             WHERE success_rate IS NOT NULL GROUP BY source, reading_error ORDER BY source"
        ),
        "source,reading_error,n\nIBC README,,2\n\"IBC paper, Fig. 6 (read from the plot)\",0.05,18\n"
    );
    // Fig. 6's MSE points (9 readings and the claim of 0002) are those of IBC's N-D network.
    assert_eq!(
        query_csv(
            &db,
            "SELECT variant, COUNT(*) AS n FROM baselines \
             WHERE method = 'mse' AND source LIKE 'IBC paper, Fig. 6%' GROUP BY variant"
        ),
        "variant,n\n\"width 128, depth 16\",10\n"
    );
    assert_eq!(
        query_csv(
            &db,
            "SELECT COUNT(*) FROM baselines WHERE n_dim = 16 AND success_rate >= 0.95"
        ),
        "COUNT(*)\n1\n"
    );
}
