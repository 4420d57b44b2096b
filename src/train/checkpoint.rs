//! Checkpoint files. A checkpoint folder holds, for every saved step,
//! `step_NNNNNNN.safetensors` (exactly the model's state dict under the seed's names, so
//! PyTorch's `load_state_dict(strict=True)` takes it) and `step_NNNNNNN.optim.safetensors`
//! (Adam moments and step), and once per folder `norm_params.json` and `policy.json`
//! (the network, objective and inference settings needed to rebuild the policy).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::data::Normalizer;
use crate::policy::PolicySpec;

pub const NORM_PARAMS_FILE: &str = "norm_params.json";
pub const POLICY_FILE: &str = "policy.json";

/// The files of the checkpoint at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    pub step: u64,
    pub model: PathBuf,
    pub optimizer: PathBuf,
}

impl CheckpointFiles {
    pub fn in_dir(dir: &Path, step: u64) -> Self {
        Self {
            step,
            model: dir.join(format!("step_{step:07}.safetensors")),
            optimizer: dir.join(format!("step_{step:07}.optim.safetensors")),
        }
    }
}

/// Writes the files that are the same for every step of a run.
pub fn write_run_files(dir: &Path, spec: &PolicySpec, normalizer: &Normalizer) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    normalizer.save(&dir.join(NORM_PARAMS_FILE))?;
    let policy = serde_json::to_string_pretty(spec)?;
    let path = dir.join(POLICY_FILE);
    fs::write(&path, policy + "\n").with_context(|| format!("writing {}", path.display()))
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
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let Some(step) = name
            .strip_prefix("step_")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .filter(|s| !s.contains('.'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if CheckpointFiles::in_dir(dir, step).optimizer.exists() {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Hex sha256 of a file (checkpoints are recorded and verified by it).
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The latest complete checkpoint in `dir`.
pub fn latest(dir: &Path) -> Result<CheckpointFiles> {
    match saved_steps(dir)?.last() {
        Some(&step) => Ok(CheckpointFiles::in_dir(dir, step)),
        None => bail!("{} holds no checkpoint", dir.display()),
    }
}
