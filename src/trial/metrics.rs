//! `metrics.csv` and `evaluations.csv` of a trial: appended as training goes, cut back to a
//! checkpoint's step when a trial resumes so no row is duplicated.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An append-only CSV file of serializable rows with a `step` column first.
pub struct CsvLog {
    path: PathBuf,
    writer: csv::Writer<fs::File>,
}

impl CsvLog {
    /// Opens `path` for appending, first dropping rows whose step is past `keep_until`.
    pub fn open<T: Serialize + DeserializeOwned>(
        path: &Path,
        keep_until: u64,
        step_of: impl Fn(&T) -> u64,
    ) -> Result<Self> {
        let mut kept: Vec<T> = Vec::new();
        if path.exists() {
            let mut reader = csv::Reader::from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for row in reader.deserialize::<T>() {
                let row = row.with_context(|| format!("reading a row of {}", path.display()))?;
                if step_of(&row) <= keep_until {
                    kept.push(row);
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut writer = csv::Writer::from_writer(file);
        for row in &kept {
            writer.serialize(row)?;
        }
        writer.flush()?;
        Ok(Self {
            path: path.to_owned(),
            writer,
        })
    }

    pub fn append<T: Serialize>(&mut self, row: &T) -> Result<()> {
        self.writer
            .serialize(row)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}
