//! Names of checkpoint files, the per-folder run files, and atomic writes.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::data::Normalizer;
use crate::policy::PolicySpec;
use crate::task::TaskConfig;

pub const NORM_PARAMS_FILE: &str = "norm_params.json";
pub const POLICY_FILE: &str = "policy.json";
/// The task the policy was trained for (its `[task]` table as JSON).
pub const TASK_FILE: &str = "task.json";

/// The files of the checkpoint at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    pub step: u64,
    pub model: PathBuf,
    pub optimizer: PathBuf,
    /// sha256 of `model` and `optimizer`, `sha256sum` format.
    pub checksums: PathBuf,
}

impl CheckpointFiles {
    pub fn in_dir(dir: &Path, step: u64) -> Self {
        Self {
            step,
            model: dir.join(format!("step_{step:07}.safetensors")),
            optimizer: dir.join(format!("step_{step:07}.optim.safetensors")),
            checksums: dir.join(format!("step_{step:07}.sha256")),
        }
    }

    /// The checkpoint a model file (`step_NNNNNNN.safetensors`) belongs to.
    pub fn of_model_file(model: &Path) -> Result<Self> {
        let name = model.file_name().unwrap_or_default().to_string_lossy();
        let step = name
            .strip_prefix("step_")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .filter(|s| !s.contains('.'))
            .and_then(|s| s.parse::<u64>().ok())
            .with_context(|| {
                format!(
                    "{}: not a step_NNNNNNN.safetensors model file",
                    model.display()
                )
            })?;
        Ok(Self::in_dir(model.parent().unwrap_or(Path::new(".")), step))
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        self.model.parent().unwrap_or(Path::new("."))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// a reader (or a process killed mid-write) never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes a file that never changes once written: absent, it is written atomically; present
/// with the same bytes, it is left alone; present with other bytes, that is an error (the
/// folder belongs to another run).
pub fn write_once(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::read(path) {
        Ok(existing) if existing == bytes => Ok(()),
        Ok(_) => bail!(
            "{} already exists with other contents: this folder belongs to another run",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(path, bytes),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the files that are the same for every step of a run (once).
pub fn write_run_files(dir: &Path, spec: &PolicySpec, normalizer: &Normalizer) -> Result<()> {
    write_once(
        &dir.join(NORM_PARAMS_FILE),
        normalizer.to_json()?.as_bytes(),
    )?;
    let policy = serde_json::to_string_pretty(spec)? + "\n";
    write_once(&dir.join(POLICY_FILE), policy.as_bytes())
}

/// Writes `task.json` (once): a checkpoint folder says which task its policy acts in.
pub fn write_task_file(dir: &Path, task: &TaskConfig) -> Result<()> {
    write_once(
        &dir.join(TASK_FILE),
        (serde_json::to_string_pretty(task)? + "\n").as_bytes(),
    )
}

/// The task of a checkpoint folder, if it has a `task.json` (older folders do not).
pub fn read_task_file(dir: &Path) -> Result<Option<TaskConfig>> {
    let path = dir.join(TASK_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads `policy.json` and `norm_params.json` of a checkpoint folder.
pub fn read_run_files(dir: &Path) -> Result<(PolicySpec, Normalizer)> {
    let path = dir.join(POLICY_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: PolicySpec =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
    let normalizer = Normalizer::load(&dir.join(NORM_PARAMS_FILE))?;
    Ok((spec, normalizer))
}

/// Steps with a complete checkpoint (model and optimizer) in `dir`, ascending.
pub fn saved_steps(dir: &Path) -> Result<Vec<u64>> {
    let mut steps = Vec::new();
    if !dir.exists() {
        return Ok(steps);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Ok(files) = CheckpointFiles::of_model_file(&path) else {
            continue;
        };
        if files.optimizer.exists() {
            steps.push(files.step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// The latest complete checkpoint in `dir`.
pub fn latest(dir: &Path) -> Result<CheckpointFiles> {
    match saved_steps(dir)?.last() {
        Some(&step) => Ok(CheckpointFiles::in_dir(dir, step)),
        None => bail!("{} holds no checkpoint", dir.display()),
    }
}

/// Hex sha256 of a file.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_run_file_is_written_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POLICY_FILE);
        write_once(&path, b"{\"kind\": \"ebm\"}\n").unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        // Same bytes: the file is left as it is (an atomic rewrite would be a new inode).
        write_once(&path, b"{\"kind\": \"ebm\"}\n").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        let err = write_once(&path, b"{\"kind\": \"mse\"}\n").unwrap_err();
        assert!(err.to_string().contains("another run"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"kind\": \"ebm\"}\n");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
