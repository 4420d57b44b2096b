//! Checkpoint files: their names, atomic writes, sha256 checks and reading. Every reader of
//! a checkpoint (evaluation, a worker resuming a trial, a report's replay) goes through
//! [`verify`], the one place that decides whether a checkpoint may be used.
//!
//! A checkpoint folder holds, for every saved step, `step_NNNNNNN.safetensors` (exactly
//! the model's state dict under the seed's names, so PyTorch's
//! `load_state_dict(strict=True)` takes it), `step_NNNNNNN.optim.safetensors` (Adam
//! moments and step) and `step_NNNNNNN.sha256` (the two files' sha256 in `sha256sum`
//! format, so a trial folder copied without its database is still checked, also by
//! `sha256sum -c`); and once per folder `norm_params.json`, `policy.json` and `task.json`
//! (what is needed to rebuild the policy and the task it acts in).

mod files;
mod verify;

pub use files::{
    file_sha256, latest, read_run_files, read_task_file, saved_steps, write_atomic, write_once,
    write_run_files, write_task_file, CheckpointFiles, NORM_PARAMS_FILE, POLICY_FILE, TASK_FILE,
};
pub use verify::{save, verify, ChecksumError, SavedCheckpoint, VerifiedCheckpoint};
