-- Published numbers to compare against (../shared/reference/ibc-particle.md), so reports and
-- users' queries can join their results with them. success_rate is NULL where the source
-- states only a qualitative result (the note says what).

CREATE TABLE baselines (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    task          TEXT NOT NULL,
    n_dim         INTEGER NOT NULL,
    method        TEXT NOT NULL,          -- 'ebm' (implicit) or 'mse' (explicit), as policy.kind
    variant       TEXT,                   -- how the EBM was trained or acts: 'langevin', 'dfo'
    steps         INTEGER,
    episodes      INTEGER,
    success_rate  REAL,
    note          TEXT NOT NULL
);

INSERT INTO baselines (source, task, n_dim, method, variant, steps, episodes, success_rate, note) VALUES
    ('IBC README', 'particle', 2, 'ebm', 'langevin', 10000, 50, 0.96,
     '256x2 ResNet, Langevin negatives; 13.3 train steps/s'),
    ('IBC README', 'particle', 2, 'mse', NULL, 10000, 20, 0.05,
     '256x2 ResNet, MSE; 21.7 train steps/s'),
    ('IBC paper, Fig. 6', 'particle', 2, 'ebm', 'langevin', NULL, NULL, 0.95,
     '2,000 demos; implicit (Langevin) at least 95% up to N = 16 (lower bound)'),
    ('IBC paper, Fig. 6', 'particle', 4, 'ebm', 'langevin', NULL, NULL, 0.95,
     '2,000 demos; implicit (Langevin) at least 95% up to N = 16 (lower bound)'),
    ('IBC paper, Fig. 6', 'particle', 8, 'ebm', 'langevin', NULL, NULL, 0.95,
     '2,000 demos; implicit (Langevin) at least 95% up to N = 16 (lower bound)'),
    ('IBC paper, Fig. 6', 'particle', 16, 'ebm', 'langevin', NULL, NULL, 0.95,
     '2,000 demos; implicit (Langevin) at least 95% up to N = 16 (lower bound)'),
    ('IBC paper, Fig. 6', 'particle', 8, 'mse', NULL, NULL, NULL, NULL,
     '2,000 demos; explicit MSE succeeds only up to N = 8'),
    ('IBC paper, App. B.4 / Fig. 11', 'particle', 5, 'ebm', 'dfo', NULL, NULL, NULL,
     'plain DFO fails past N = 5 (autoregressive DFO and Langevin reach N = 16)');
