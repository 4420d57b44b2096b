-- The results store. Portable SQL (SQLite now, PostgreSQL later): no SQLite-only types,
-- upserts with ON CONFLICT, timestamps as ISO-8601 text, u64 seeds as text.

CREATE TABLE experiments (
    name        TEXT PRIMARY KEY,
    spec_path   TEXT,
    created_at  TEXT NOT NULL
);

-- A trial is identified by its experiment and the hash of its resolved config.
CREATE TABLE trials (
    experiment    TEXT NOT NULL REFERENCES experiments (name),
    id            TEXT NOT NULL,
    overrides     TEXT NOT NULL,          -- JSON object of the settings that make it
    config        TEXT NOT NULL,          -- JSON of the fully resolved spec
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'killed')),
    device        TEXT,
    attempt       INTEGER NOT NULL DEFAULT 0,
    pid           INTEGER,
    host          TEXT,
    step          INTEGER NOT NULL DEFAULT 0,
    iterations    INTEGER NOT NULL,
    heartbeat_at  TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    error         TEXT,
    PRIMARY KEY (experiment, id)
);

-- One row per (trial, step, metric); a resumed trial overwrites, never duplicates.
CREATE TABLE metrics (
    experiment  TEXT NOT NULL,
    trial       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    value       REAL NOT NULL,
    wall_time   REAL NOT NULL,
    PRIMARY KEY (experiment, trial, step, name)
);

-- The latest value of each metric, so listings never scan the history.
CREATE TABLE metrics_latest (
    experiment  TEXT NOT NULL,
    trial       TEXT NOT NULL,
    name        TEXT NOT NULL,
    step        INTEGER NOT NULL,
    value       REAL NOT NULL,
    PRIMARY KEY (experiment, trial, name)
);

CREATE TABLE checkpoints (
    experiment  TEXT NOT NULL,
    trial       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (experiment, trial, step)
);

CREATE TABLE evaluations (
    id                            INTEGER PRIMARY KEY,
    experiment                    TEXT NOT NULL,
    trial                         TEXT NOT NULL,
    step                          INTEGER NOT NULL,
    episodes                      INTEGER NOT NULL,
    successes                     INTEGER NOT NULL,
    success_rate                  REAL NOT NULL,
    ci_low                        REAL NOT NULL,
    ci_high                       REAL NOT NULL,
    mean_min_distance_first_goal  REAL NOT NULL,
    mean_min_distance_second_goal REAL NOT NULL,
    wall_seconds                  REAL NOT NULL,
    UNIQUE (experiment, trial, step)
);

CREATE TABLE episodes (
    evaluation                  INTEGER NOT NULL REFERENCES evaluations (id),
    idx                         INTEGER NOT NULL,
    seed                        TEXT NOT NULL,
    success                     INTEGER NOT NULL,
    steps                       INTEGER NOT NULL,
    min_distance_first_goal     REAL NOT NULL,
    min_distance_second_goal    REAL NOT NULL,
    final_distance_first_goal   REAL NOT NULL,
    final_distance_second_goal  REAL NOT NULL,
    PRIMARY KEY (evaluation, idx)
);

CREATE INDEX trials_by_status ON trials (status);
