//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A spec that trains and evaluates in a second: 6 iterations of a 16-wide net, 4 episodes.
pub const TINY: &str = "name = \"tiny-sweep\"\n\
    [data]\ndemos = 10\n\
    [policy]\nhidden = 16\n\
    [train]\niterations = 6\nbatch_size = 16\ncheckpoint_every = 3\neval_every = 0\nlog_every = 1\n\
    [train.negatives]\nkind = \"uniform\"\ncount = 8\n\
    [eval]\nepisodes = 4\nsamples = 64\n\
    [resources]\ndevice = \"cpu\"\n";

/// The project's own Python (with torch and numpy), installed by `scripts/setup.sh`.
pub fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a Python program with `input` on stdin and returns its stdout.
pub fn run_python(program: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the `ebmlab` binary with arguments.
pub fn ebmlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebmlab"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("ebmlab runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// libtorch's random generator is process-global: tests that train or sample hold this
/// lock so that parallel test threads do not interleave their draws.
pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `ebmlab resume EXPERIMENT --quiet --runs RUNS`.
pub fn resume(experiment: &str, runs: &std::path::Path) -> Output {
    ebmlab(&[
        "resume",
        experiment,
        "--quiet",
        "--runs",
        runs.to_str().unwrap(),
    ])
}

/// `ebmlab report EXPERIMENTS... --db DB --out OUT --trajectories N`.
pub fn report(
    db: &std::path::Path,
    experiments: &[&str],
    out: &std::path::Path,
    trajectories: usize,
) -> Output {
    report_with(db.to_str().unwrap(), experiments, out, trajectories)
}

/// [`report`] of a database named as `--db` takes it (a path or a URL).
pub fn report_with(
    db: &str,
    experiments: &[&str],
    out: &std::path::Path,
    trajectories: usize,
) -> Output {
    let trajectories = trajectories.to_string();
    let mut args = vec!["report"];
    args.extend_from_slice(experiments);
    args.extend([
        "--db",
        db,
        "--out",
        out.to_str().unwrap(),
        "--trajectories",
        &trajectories,
    ]);
    ebmlab(&args)
}

/// `ebmlab query SQL --csv` on a results database, or `None` when the query fails
/// (for polling a database that may not exist yet).
pub fn try_query_csv(db: &std::path::Path, sql: &str) -> Option<String> {
    let out = ebmlab(&["query", sql, "--csv", "--db", db.to_str().unwrap()]);
    out.status.success().then(|| stdout(&out))
}

/// `ebmlab query SQL --csv` on a results database, which must succeed.
pub fn query_csv(db: &std::path::Path, sql: &str) -> String {
    let out = ebmlab(&["query", sql, "--csv", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out)
}

/// `ebmlab run FILE --quiet --slots 2 --runs RUNS` in the background, heartbeats every 0.2 s.
pub fn spawn_run(file: &std::path::Path, runs: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ebmlab"))
        .args(["run", file.to_str().unwrap(), "--quiet", "--slots", "2"])
        .args(["--runs", runs.to_str().unwrap()])
        .env("EBMLAB_HEARTBEAT_SECONDS", "0.2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `kill SIGNAL PIDS...`, which must succeed.
pub fn kill(signal: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

/// Polls `sql` (first value of the first row) until `done` says so, for at most 2 minutes.
pub fn wait_for(db: &std::path::Path, sql: &str, done: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let value = try_query_csv(db, sql)
            .and_then(|csv| csv.lines().nth(1).map(str::to_owned))
            .unwrap_or_default();
        if done(&value) {
            return value;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{sql}: still {value:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The first value of the first row of a query.
pub fn query_one(db: &std::path::Path, sql: &str) -> String {
    query_csv(db, sql)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The seed's PyTorch SequenceEBM, written from the seed document: run with arguments
/// `MODEL IO NORM BLOCKS [HIDDEN [up-to-a-constant]]`, it loads MODEL (`strict=True`) and
/// prints the largest difference between its energies of IO's `obs` and `actions` and IO's
/// `energies` (less their mean difference, with `up-to-a-constant`).
pub const SEED_MODULE: &str = r#"
import sys, torch, torch.nn as nn
from safetensors.torch import load_file

class MLPResidualBlock(nn.Module):
    def __init__(self, hidden_dim=256, dropout=0.1, norm_type='layer'):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim) if norm_type == 'layer' else None
        self.norm2 = nn.LayerNorm(hidden_dim) if norm_type == 'layer' else None
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()
    def forward(self, x):
        identity = x
        out = self.norm1(x) if self.norm1 is not None else x
        out = self.fc1(self.dropout1(self.activation(out)))
        out = self.norm2(out) if self.norm2 is not None else out
        out = self.fc2(self.dropout2(self.activation(out)))
        return out + identity

class SequenceEBM(nn.Module):
    def __init__(self, obs_dim=8, action_dim=2, obs_seq_len=2, hidden_dim=256,
                 num_residual_blocks=1, dropout=0.0, norm_type=None):
        super().__init__()
        self.projection = nn.Linear(obs_seq_len * obs_dim + action_dim, hidden_dim)
        self.blocks = nn.ModuleList([MLPResidualBlock(hidden_dim, dropout, norm_type)
                                     for _ in range(num_residual_blocks)])
        self.energy_projection = nn.Linear(hidden_dim, 1)
    def forward(self, obs_seq, action):
        B, N, _ = action.shape
        obs_flat = obs_seq.reshape(B, -1).unsqueeze(1).expand(B, N, -1)
        x = torch.cat([obs_flat, action], dim=-1).reshape(B * N, -1)
        x = self.projection(x)
        for block in self.blocks:
            x = block(x)
        return self.energy_projection(x).reshape(B, N)

model_path, io_path, norm_type, blocks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
hidden = int(sys.argv[5]) if len(sys.argv) > 5 else 256
model = SequenceEBM(norm_type=None if norm_type == 'none' else norm_type,
                    num_residual_blocks=blocks, hidden_dim=hidden)
model.load_state_dict(load_file(model_path), strict=True)
model.eval()
io = load_file(io_path)
with torch.no_grad():
    ours = model(io['obs'], io['actions'])
diff = ours - io['energies']
if len(sys.argv) > 6 and sys.argv[6] == 'up-to-a-constant':
    diff = diff - diff.mean()
print(float(diff.abs().max()))
"#;

/// The PostgreSQL server the tests use (`EBMLAB_TEST_POSTGRES`, a URL; `scripts/test.sh`
/// starts one with `scripts/cluster.sh` and sets it). Under CI its absence is an error, so
/// the PostgreSQL half of a test cannot be skipped there unseen.
pub fn postgres_server() -> Option<String> {
    match std::env::var("EBMLAB_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must test PostgreSQL: set EBMLAB_TEST_POSTGRES (scripts/test.sh does)")
        }
        _ => {
            eprintln!("EBMLAB_TEST_POSTGRES is not set: PostgreSQL left out of this test");
            None
        }
    }
}

/// A PostgreSQL database of the test's own: a fresh schema on the test server, reached
/// through a URL whose `search_path` is that schema.
pub fn postgres_database(name: &str) -> Option<ebmlab::store::Database> {
    let server = postgres_server()?;
    let schema = format!(
        "t_{}_{}_{}",
        name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    ebmlab::store::block_on(async {
        use sqlx::{Connection as _, Executor as _};
        let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
        conn.execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
    });
    let separator = if server.contains('?') { '&' } else { '?' };
    let url = format!("{server}{separator}options=-c%20search_path%3D{schema}");
    Some(url.parse().unwrap())
}

/// Fresh results databases for one test: a SQLite file in `dir`, and PostgreSQL (above).
pub fn test_databases(dir: &std::path::Path, name: &str) -> Vec<ebmlab::store::Database> {
    let mut dbs = vec![ebmlab::store::Database::Sqlite(
        dir.join(format!("{name}.sqlite")),
    )];
    dbs.extend(postgres_database(name));
    dbs
}
