//! Where a results database is: a SQLite file (a path, or `sqlite://PATH`) on one machine,
//! or a PostgreSQL server (`postgres://user@host[:port]/db`) that workers on many hosts
//! reach.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    /// The URL sqlx connects to (`mode` is SQLite's open mode: `rwc` or `ro`).
    pub(super) fn url(&self, sqlite_mode: &str) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite://{}?mode={sqlite_mode}", path.display()),
            Database::Postgres(url) => url.clone(),
        }
    }

    /// What `--db` takes to name this database (a worker is told it so).
    pub fn arg(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

impl FromStr for Database {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Database::Postgres(text.to_owned()));
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            bail!("database `{text}`: unknown scheme `{scheme}` (a path, sqlite://PATH or postgres://...)");
        }
        if text.is_empty() {
            bail!("database: an empty name (a path, sqlite://PATH or postgres://...)");
        }
        Ok(Database::Sqlite(PathBuf::from(text)))
    }
}

impl From<&Path> for Database {
    fn from(path: &Path) -> Self {
        Database::Sqlite(path.to_owned())
    }
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Self {
        Database::Sqlite(path)
    }
}

/// A path as it is, a URL without its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let credentials = &url[scheme + 3..at];
                    match credentials.split_once(':') {
                        Some((user, _)) => {
                            write!(f, "{}{user}:***{}", &url[..scheme + 3], &url[at..])
                        }
                        None => f.write_str(url),
                    }
                }
                _ => f.write_str(url),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_name_their_database() {
        let db: Database = "runs/ebmlab.sqlite".parse().unwrap();
        assert_eq!(db, Database::Sqlite("runs/ebmlab.sqlite".into()));
        assert_eq!(db.url("ro"), "sqlite://runs/ebmlab.sqlite?mode=ro");
        let db: Database = "sqlite:///tmp/x.sqlite".parse().unwrap();
        assert_eq!(db, Database::Sqlite("/tmp/x.sqlite".into()));
        let pg: Database = "postgres://me:secret@db:5432/ebmlab".parse().unwrap();
        assert!(pg.is_postgres());
        assert_eq!(pg.to_string(), "postgres://me:***@db:5432/ebmlab");
        assert_eq!(pg.arg(), "postgres://me:secret@db:5432/ebmlab");
        assert!("mysql://x/y".parse::<Database>().is_err());
    }
}
