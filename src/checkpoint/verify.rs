//! Writing a checkpoint with its checksums, and the one check every reader makes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::files::{file_sha256, write_atomic, CheckpointFiles};

/// Why a checkpoint may not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error(
        "{file}: sha256 {actual} differs from {expected}, recorded in {recorded_in} when the \
         checkpoint was written: the file changed since; refusing to use it"
    )]
    Mismatch {
        file: PathBuf,
        expected: String,
        actual: String,
        recorded_in: String,
    },
    #[error(
        "{file}: no sha256 recorded for it (no {checksums}, nor a row in a results database); \
         refusing to use an unchecked checkpoint"
    )]
    Unrecorded { file: PathBuf, checksums: PathBuf },
    #[error("{checksums}: line {line} is not `SHA256  FILE`")]
    Malformed { checksums: PathBuf, line: usize },
}

/// A checkpoint written by [`save`].
#[derive(Debug, Clone)]
pub struct SavedCheckpoint {
    pub files: CheckpointFiles,
    pub model_sha256: String,
    pub model_bytes: u64,
}

/// A checkpoint whose files have the sha256 recorded when they were written. Only
/// [`verify`] makes one, so whatever takes it (a policy to evaluate, a trainer to resume)
/// knows its bytes were checked.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    files: CheckpointFiles,
    model_sha256: String,
}

impl VerifiedCheckpoint {
    pub fn files(&self) -> &CheckpointFiles {
        &self.files
    }
    pub fn step(&self) -> u64 {
        self.files.step
    }
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }
}

/// Writes the checkpoint of `step` into `dir`: `write_model` and `write_optimizer` write
/// the two files at the paths they are given (temporary names), then the checksum file and
/// the renames make it appear whole. Order: checksums, model, optimizer; a checkpoint is
/// listed once both tensor files exist, so a listed checkpoint always has its checksums.
pub fn save(
    dir: &Path,
    step: u64,
    write_model: impl FnOnce(&Path) -> Result<()>,
    write_optimizer: impl FnOnce(&Path) -> Result<()>,
) -> Result<SavedCheckpoint> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = CheckpointFiles::in_dir(dir, step);
    let (model_tmp, optim_tmp) = (temporary(&files.model), temporary(&files.optimizer));
    write_model(&model_tmp)?;
    write_optimizer(&optim_tmp)?;
    let model_sha256 = file_sha256(&model_tmp)?;
    let optim_sha256 = file_sha256(&optim_tmp)?;
    let lines = format!(
        "{model_sha256}  {}\n{optim_sha256}  {}\n",
        file_name(&files.model),
        file_name(&files.optimizer)
    );
    write_atomic(&files.checksums, lines.as_bytes())?;
    for (tmp, path) in [(&model_tmp, &files.model), (&optim_tmp, &files.optimizer)] {
        fs::rename(tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    let model_bytes = fs::metadata(&files.model)
        .with_context(|| format!("reading {}", files.model.display()))?
        .len();
    Ok(SavedCheckpoint {
        files,
        model_sha256,
        model_bytes,
    })
}

/// Checks a checkpoint's files against the sha256 written beside them and, when given,
/// the one a results database recorded for the model. The optimizer file is checked when
/// it is there (evaluating needs only the model).
pub fn verify(files: &CheckpointFiles, recorded: Option<&str>) -> Result<VerifiedCheckpoint> {
    let beside = read_checksums(&files.checksums)?;
    if beside.is_none() && recorded.is_none() {
        return Err(ChecksumError::Unrecorded {
            file: files.model.clone(),
            checksums: files.checksums.clone(),
        }
        .into());
    }
    let model_sha256 = file_sha256(&files.model)?;
    let mut expectations: Vec<(&Path, String, String)> = Vec::new();
    if let Some(beside) = &beside {
        let place = files.checksums.display().to_string();
        for path in [&files.model, &files.optimizer] {
            if let Some(expected) = beside.get(&file_name(path)) {
                if path == &files.model || path.exists() {
                    expectations.push((path, expected.clone(), place.clone()));
                }
            }
        }
    }
    if let Some(recorded) = recorded {
        expectations.push((
            &files.model,
            recorded.to_owned(),
            "the results database".into(),
        ));
    }
    for (path, expected, recorded_in) in expectations {
        let actual = if path == files.model {
            model_sha256.clone()
        } else {
            file_sha256(path)?
        };
        if actual != expected {
            return Err(ChecksumError::Mismatch {
                file: path.to_owned(),
                expected,
                actual,
                recorded_in,
            }
            .into());
        }
    }
    Ok(VerifiedCheckpoint {
        files: files.clone(),
        model_sha256,
    })
}

/// File name to sha256, from a `sha256sum`-format file; `None` when there is none.
fn read_checksums(path: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut sums = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let malformed = || ChecksumError::Malformed {
            checksums: path.to_owned(),
            line: i + 1,
        };
        let (sha, name) = line.split_once("  ").ok_or_else(malformed)?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed().into());
        }
        sums.insert(name.trim().to_owned(), sha.to_ascii_lowercase());
    }
    Ok(Some(sums))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// A sibling name that listings ignore (it keeps the `.safetensors` ending, which tells
/// tch the format).
fn temporary(path: &Path) -> PathBuf {
    path.with_file_name(format!(".partial.{}", file_name(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_two(dir: &Path, step: u64) -> SavedCheckpoint {
        save(
            dir,
            step,
            |p| Ok(fs::write(p, b"model bytes")?),
            |p| Ok(fs::write(p, b"optimizer bytes")?),
        )
        .unwrap()
    }

    #[test]
    fn a_saved_checkpoint_verifies_and_a_changed_byte_is_refused_naming_both_sums() {
        let dir = tempfile::tempdir().unwrap();
        let saved = write_two(dir.path(), 7);
        assert_eq!(super::super::saved_steps(dir.path()).unwrap(), [7]);
        let ok = verify(&saved.files, Some(&saved.model_sha256)).unwrap();
        assert_eq!(ok.step(), 7);
        // sha256sum's own format: `sha256sum -c` would take the file.
        let text = fs::read_to_string(&saved.files.checksums).unwrap();
        assert!(text.starts_with(&format!(
            "{}  step_0000007.safetensors\n",
            saved.model_sha256
        )));

        fs::write(&saved.files.model, b"model bytez").unwrap();
        let err = verify(&saved.files, None).unwrap_err().to_string();
        assert!(err.contains("step_0000007.safetensors"), "{err}");
        assert!(err.contains(&saved.model_sha256), "{err}");
        assert!(
            err.contains(&file_sha256(&saved.files.model).unwrap()),
            "{err}"
        );

        // The database's record is checked too, even where the file beside agrees.
        fs::write(&saved.files.model, b"model bytes").unwrap();
        let err = verify(&saved.files, Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("results database"), "{err}");

        fs::write(&saved.files.optimizer, b"optimizer bytez").unwrap();
        let err = verify(&saved.files, None).unwrap_err().to_string();
        assert!(err.contains("step_0000007.optim.safetensors"), "{err}");
    }

    #[test]
    fn a_checkpoint_with_no_recorded_sum_is_refused_unless_a_database_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let saved = write_two(dir.path(), 3);
        fs::remove_file(&saved.files.checksums).unwrap();
        let err = verify(&saved.files, None).unwrap_err().to_string();
        assert!(err.contains("no sha256 recorded"), "{err}");
        verify(&saved.files, Some(&saved.model_sha256)).unwrap();
        fs::write(&saved.files.checksums, "not a sum\n").unwrap();
        let err = verify(&saved.files, None).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
