//! `metrics.csv` and `evaluations.csv` of a trial: appended as training goes, cut back to a
//! checkpoint's step when a trial resumes so no row is duplicated.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

/// An append-only CSV file of serializable rows with a `step` column first.
pub struct CsvLog {
    path: PathBuf,
    writer: csv::Writer<fs::File>,
}

impl CsvLog {
    /// Opens `path` for appending, first dropping rows whose step is past `keep_until`
    /// and a last row cut short (a process killed while writing it); returns the rows kept.
    pub fn open<T: Serialize + DeserializeOwned>(
        path: &Path,
        keep_until: u64,
        step_of: impl Fn(&T) -> u64,
    ) -> Result<(Self, Vec<T>)> {
        let mut kept: Vec<T> = Vec::new();
        if path.exists() {
            let mut reader = csv::Reader::from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut rows = reader.deserialize::<T>().peekable();
            while let Some(row) = rows.next() {
                match row {
                    Ok(row) if step_of(&row) <= keep_until => kept.push(row),
                    Ok(_) => {}
                    Err(e) if rows.peek().is_none() => {
                        warn!("{}: dropping a torn last row ({e})", path.display())
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("reading a row of {}", path.display()))
                    }
                }
            }
        }
        // The kept rows replace the file in one rename, so a kill cannot leave it half
        // rewritten.
        let partial = path.with_extension("csv.partial");
        let mut rewrite = csv::Writer::from_path(&partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        for row in &kept {
            rewrite.serialize(row)?;
        }
        rewrite.flush()?;
        drop(rewrite);
        fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // The header is written with the first row, so only when no row was kept.
        let writer = csv::WriterBuilder::new()
            .has_headers(kept.is_empty())
            .from_writer(file);
        let log = Self {
            path: path.to_owned(),
            writer,
        };
        Ok((log, kept))
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

/// The training time a metrics log records: each logged window's steps at its rate, from
/// `(step, iterations per second)` rows in step order.
pub fn logged_seconds(rows: impl IntoIterator<Item = (u64, f64)>) -> f64 {
    let mut previous = 0;
    let mut seconds = 0.0;
    for (step, rate) in rows {
        if rate > 0.0 {
            seconds += step.saturating_sub(previous) as f64 / rate;
        }
        previous = step;
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
    struct Row {
        step: u64,
        value: f64,
    }

    #[test]
    fn reopening_cuts_back_to_the_step_and_drops_a_torn_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let (mut log, _) = CsvLog::open::<Row>(&path, 0, |r| r.step).unwrap();
        for step in 1..=5 {
            log.append(&Row { step, value: 0.5 }).unwrap();
        }
        log.flush().unwrap();
        drop(log);
        // A process killed mid-write leaves half a row.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("6,0.");
        text.truncate(text.len() - 1);
        fs::write(&path, format!("{text}\n7")).unwrap();
        let (mut log, kept) = CsvLog::open::<Row>(&path, 3, |r| r.step).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3]);
        log.append(&Row {
            step: 4,
            value: 1.0,
        })
        .unwrap();
        log.flush().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "step,value\n1,0.5\n2,0.5\n3,0.5\n4,1.0\n"
        );
        // A bad row in the middle is an error that names the file.
        fs::write(&path, "step,value\n1,0.5\nx\n3,0.5\n").unwrap();
        let err = CsvLog::open::<Row>(&path, 9, |r| r.step).err().unwrap();
        assert!(format!("{err:#}").contains("m.csv"), "{err:#}");
        // Nothing kept: the header comes with the first row.
        let (mut log, _) =
            CsvLog::open::<Row>(&path.with_file_name("n.csv"), 0, |r| r.step).unwrap();
        log.append(&Row {
            step: 1,
            value: 2.0,
        })
        .unwrap();
        log.flush().unwrap();
        assert_eq!(
            fs::read_to_string(path.with_file_name("n.csv")).unwrap(),
            "step,value\n1,2.0\n"
        );
    }

    #[test]
    fn logged_time_is_each_windows_steps_at_its_rate() {
        // Windows of 10 steps at 5 it/s, 30 steps at 10 it/s, then a row without a rate.
        let rows = [(10, 5.0), (40, 10.0), (50, 0.0)];
        assert!((logged_seconds(rows) - 5.0).abs() < 1e-12);
        assert_eq!(logged_seconds([]), 0.0);
    }
}
