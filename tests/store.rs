//! The results store, on SQLite and on PostgreSQL (each test runs on both): concurrent
//! writers lose nothing, reruns do not duplicate, and `query` refuses writes.

mod common;

use common::{ebmlab, stderr, stdout, test_databases};
use ebmlab::store::KnownTrial::{Kept, TakesConfig};
use ebmlab::store::{block_on, Database, MetricRow, Store};

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

fn count(db: &Database, sql: &str) -> i64 {
    block_on(async {
        let store = Store::open_read_only(db).await.unwrap();
        store.query(sql).await.unwrap().rows[0][0].parse().unwrap()
    })
}

#[test]
fn eight_concurrent_writers_lose_no_row_and_never_see_a_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    for db in test_databases(dir.path(), "writers") {
        eight_writers(&db);
    }
}

fn eight_writers(db: &Database) {
    block_on(Store::open(db)).unwrap();
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
    assert_eq!(count(db, "SELECT COUNT(*) FROM metrics"), 80_000, "{db}");
    for w in 0..8 {
        let sql = format!("SELECT COUNT(DISTINCT step) FROM metrics WHERE trial = 'trial{w}'");
        assert_eq!(count(db, &sql), 10_000);
    }
    assert_eq!(count(db, "SELECT COUNT(*) FROM metrics_latest"), 8);
    assert_eq!(count(db, "SELECT MIN(step) FROM metrics_latest"), 9_999);
}

#[test]
fn rewriting_steps_replaces_rows_and_latest_keeps_the_newest_step() {
    let dir = tempfile::tempdir().unwrap();
    for db in test_databases(dir.path(), "rewrites") {
        block_on(async {
            let store = Store::open(&db).await.unwrap();
            store.insert_metrics(&rows("t", 0..100)).await.unwrap();
            // A resumed trial writes steps 50.. again, and an old batch arrives late; a
            // batch may hold a step twice (the later row wins).
            store.insert_metrics(&rows("t", 50..120)).await.unwrap();
            store.insert_metrics(&rows("t", 0..10)).await.unwrap();
            let mut twice = rows("t", 5..6);
            twice[0].value = 99.0;
            twice.insert(0, rows("t", 5..6).remove(0));
            store.insert_metrics(&twice).await.unwrap();
        });
        assert_eq!(count(&db, "SELECT COUNT(*) FROM metrics"), 120, "{db}");
        assert_eq!(
            count(&db, "SELECT step FROM metrics_latest WHERE trial = 't'"),
            119
        );
        assert_eq!(
            count(
                &db,
                "SELECT CAST(value AS BIGINT) FROM metrics WHERE step = 5"
            ),
            99
        );
    }
}

#[test]
fn a_run_replaces_a_planned_trials_config_unless_it_is_running_and_a_worker_never_does() {
    let dir = tempfile::tempdir().unwrap();
    for db in test_databases(dir.path(), "rerecord") {
        let config = |slots: u32| format!("{{\"resources\":{{\"slots_per_gpu\":{slots}}}}}");
        let (status, kept) = block_on(async {
            let store = Store::open(&db).await.unwrap();
            store.upsert_experiment("exp", "exp.toml").await.unwrap();
            let stored = || async { store.stored_trial("exp", "t").await.unwrap() };
            store
                .add_trial("exp", "t", "{}", &config(12), 10, TakesConfig)
                .await
                .unwrap();
            // A later run, with its own resources.
            store
                .add_trial("exp", "t", "{}", &config(20), 10, TakesConfig)
                .await
                .unwrap();
            assert_eq!(stored().await.config_json, config(20), "{db}");
            // A worker records the trial it was handed with its slot's device and
            // threads: the run's config stays.
            store
                .add_trial("exp", "t", "{}", "{\"worker\":1}", 10, Kept)
                .await
                .unwrap();
            assert_eq!(stored().await.config_json, config(20), "{db}");
            // A running trial's worker has read its config: a third run leaves it alone.
            store.start_trial("exp", "t", "cpu", None).await.unwrap();
            store
                .add_trial("exp", "t", "{}", &config(4), 10, TakesConfig)
                .await
                .unwrap();
            let t = stored().await;
            (t.status, t.config_json)
        });
        assert_eq!(status, ebmlab::store::TrialStatus::Running, "{db}");
        assert_eq!(kept, config(20), "{db}");
    }
}

#[test]
fn query_reads_and_refuses_every_write() {
    let dir = tempfile::tempdir().unwrap();
    for db in test_databases(dir.path(), "query") {
        query_on(&db);
    }
    let out = ebmlab(&[
        "query",
        "SELECT 1",
        "--db",
        dir.path().join("none.sqlite").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no results database"));
}

fn query_on(db: &Database) {
    block_on(async {
        Store::open(db)
            .await
            .unwrap()
            .insert_metrics(&rows("t", 0..3))
            .await
            .unwrap();
    });
    let db_arg = db.arg();
    let out = ebmlab(&[
        "query",
        "SELECT step, value FROM metrics ORDER BY step",
        "--csv",
        "--db",
        &db_arg,
    ]);
    assert!(out.status.success(), "{db}: {}", stderr(&out));
    assert_eq!(stdout(&out), "step,value\n0,0\n1,0.5\n2,1\n", "{db}");
    let out = ebmlab(&[
        "query",
        "SELECT COUNT(*) AS n FROM metrics",
        "--db",
        &db_arg,
    ]);
    assert!(stdout(&out).contains("(1 rows)"), "{}", stdout(&out));
    // An empty result still names its columns.
    let out = ebmlab(&[
        "query",
        "SELECT step FROM metrics WHERE step < 0",
        "--csv",
        "--db",
        &db_arg,
    ]);
    assert_eq!(stdout(&out), "step\n", "{db}");

    let mut writes = vec![
        "INSERT INTO metrics VALUES ('exp', 't', 9, 'loss', 1.0, 1.0)",
        "UPDATE metrics SET value = 0",
        "DELETE FROM metrics",
        "DROP TABLE metrics",
        "CREATE TABLE x (a INTEGER)",
        "SELECT 1; DELETE FROM metrics",
    ];
    let read = match db {
        Database::Sqlite(_) => {
            // Once answered `disk I/O error`.
            writes.push("PRAGMA journal_mode=DELETE");
            "PRAGMA table_info(metrics)"
        }
        Database::Postgres(_) => {
            writes.push("CREATE SCHEMA elsewhere");
            "SELECT current_schema()"
        }
    };
    for sql in writes {
        let out = ebmlab(&["query", sql, "--db", &db_arg]);
        assert_eq!(out.status.code(), Some(2), "{db}: {sql} was not refused");
        let err = stderr(&out);
        assert!(
            err.contains("`ebmlab query` is read-only") && err.contains(sql),
            "{db}: {sql}: {err}"
        );
    }
    let out = ebmlab(&["query", read, "--db", &db_arg]);
    assert!(out.status.success(), "{db}: {}", stderr(&out));
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM metrics"),
        3,
        "{db}: nothing changed"
    );
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
