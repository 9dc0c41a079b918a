//! The SQLite backend's integration tests (one binary, modules per concern).

mod conformance;
mod migrate;
mod operations;
mod retention;
mod step;
mod storage;
mod workflow;

use durable_jobs::ManualClock;
use durable_jobs_sqlite::{SqliteOptions, SqliteStorage};
use std::path::PathBuf;

/// A fresh database file in its own temporary directory (removed on drop).
pub struct TempDb {
    /// The directory holding the file and its WAL; removed on drop.
    pub dir: tempfile::TempDir,
}

impl TempDb {
    /// A new, empty directory.
    pub fn fresh() -> Self {
        TempDb {
            dir: tempfile::Builder::new()
                .prefix("durable-jobs-sqlite-")
                .tempdir()
                .expect("create a temporary directory"),
        }
    }

    /// The database file's path (not created until opened).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }

    /// Opens the file as a storage on `clock`.
    pub async fn open(&self, clock: &ManualClock) -> SqliteStorage {
        SqliteStorage::open_with(
            self.path(),
            SqliteOptions::new().manual_clock(clock.clone()),
        )
        .await
        .expect("open sqlite storage")
    }
}
