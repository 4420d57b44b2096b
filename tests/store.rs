//! The results store: concurrent writers lose nothing, reruns do not duplicate, and the
//! query connection refuses writes.

mod common;

use std::path::Path;

use common::{ebmlab, stderr, stdout};
use ebmlab::store::{block_on, MetricRow, Store};

fn rows(trial: &str, steps: std::ops::Range<i64>) -> Vec<MetricRow> {
    steps
        .map(|step| MetricRow {
            experiment: "exp".into(),
            trial: trial.into(),
            step,
            name: "loss".into(),
            value: step as f64 * 0.5,
            wall_time: step as f64,
        })
        .collect()
}

fn count(db: &Path, sql: &str) -> i64 {
    block_on(async {
        let store = Store::open_read_only(db).await.unwrap();
        store.query(sql).await.unwrap().rows[0][0].parse().unwrap()
    })
}

#[test]
fn eight_concurrent_writers_lose_no_row_and_never_see_a_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.sqlite");
    block_on(Store::open(&db)).unwrap();
    // Eight writers, each with its own connection pool (as worker processes would have),
    // each writing 10,000 rows in transactions of 250.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let store = Store::open(&db).await.unwrap();
                    let trial = format!("trial{w}");
                    for batch in 0..40 {
                        let start = batch * 250;
                        store
                            .insert_metrics(&rows(&trial, start..start + 250))
                            .await
                            .unwrap_or_else(|e| panic!("writer {w}: {e:#}"));
                    }
                })
            })
        })
        .collect();
    for w in writers {
        w.join().expect("no writer failed");
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM metrics"), 80_000);
    for w in 0..8 {
        let sql = format!("SELECT COUNT(DISTINCT step) FROM metrics WHERE trial = 'trial{w}'");
        assert_eq!(count(&db, &sql), 10_000);
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM metrics_latest"), 8);
    assert_eq!(count(&db, "SELECT MIN(step) FROM metrics_latest"), 9_999);
}

#[test]
fn rewriting_steps_replaces_rows_and_latest_keeps_the_newest_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.sqlite");
    block_on(async {
        let store = Store::open(&db).await.unwrap();
        store.insert_metrics(&rows("t", 0..100)).await.unwrap();
        // A resumed trial writes steps 50.. again, and an old batch arrives late.
        store.insert_metrics(&rows("t", 50..120)).await.unwrap();
        store.insert_metrics(&rows("t", 0..10)).await.unwrap();
    });
    assert_eq!(count(&db, "SELECT COUNT(*) FROM metrics"), 120);
    assert_eq!(
        count(&db, "SELECT step FROM metrics_latest WHERE trial = 't'"),
        119
    );
}

#[test]
fn query_reads_and_refuses_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    block_on(async {
        Store::open(&db)
            .await
            .unwrap()
            .insert_metrics(&rows("t", 0..3))
            .await
            .unwrap();
    });
    let db_arg = db.to_str().unwrap();
    let out = ebmlab(&[
        "query",
        "SELECT step, value FROM metrics ORDER BY step",
        "--csv",
        "--db",
        db_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "step,value\n0,0\n1,0.5\n2,1\n");
    let out = ebmlab(&["query", "SELECT COUNT(*) AS n FROM metrics", "--db", db_arg]);
    assert!(stdout(&out).contains("(1 rows)"), "{}", stdout(&out));

    for sql in [
        "INSERT INTO metrics VALUES ('exp', 't', 9, 'loss', 1.0, 1.0)",
        "UPDATE metrics SET value = 0",
        "DELETE FROM metrics",
        "DROP TABLE metrics",
        "CREATE TABLE x (a INTEGER)",
        // Once answered `disk I/O error`.
        "PRAGMA journal_mode=DELETE",
        "SELECT 1; DELETE FROM metrics",
    ] {
        let out = ebmlab(&["query", sql, "--db", db_arg]);
        assert_eq!(out.status.code(), Some(2), "{sql} was not refused");
        let err = stderr(&out);
        assert!(
            err.contains("`ebmlab query` is read-only") && err.contains(sql),
            "{sql}: {err}"
        );
    }
    // Reading pragmas are reads.
    let out = ebmlab(&["query", "PRAGMA table_info(metrics)", "--db", db_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM metrics"),
        3,
        "nothing changed"
    );
    let out = ebmlab(&[
        "query",
        "SELECT 1",
        "--db",
        dir.path().join("none.sqlite").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no results database"));
}

#[test]
fn a_corrupt_database_is_named_by_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.sqlite");
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    let db_arg = db.to_str().unwrap();
    for args in [
        vec!["status", "--db", db_arg],
        vec!["query", "SELECT 1", "--db", db_arg],
        vec![
            "export",
            "e",
            "--csv",
            dir.path().to_str().unwrap(),
            "--db",
            db_arg,
        ],
        vec!["report", "e", "--db", db_arg],
    ] {
        let out = ebmlab(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(db_arg) && err.contains("not a database"),
            "{args:?}: {err}"
        );
    }
}
