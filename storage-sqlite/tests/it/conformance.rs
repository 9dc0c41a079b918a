//! Every conformance suite (storage calls, and the engine through a real Queue and
//! Worker) on a fresh SQLite file per test, and on an in-memory database.

use crate::TempDb;
use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{Clock, DynStorage, JobId, JobStatus, ManualClock};
use durable_jobs_sqlite::SqliteStorage;
use std::sync::Arc;
use std::time::Duration;

struct Sqlite {
    storage: SqliteStorage,
    clock: ManualClock,
    db: TempDb,
}

#[async_trait]
impl ConformanceHarness for Sqlite {
    async fn setup() -> Self {
        let clock = ManualClock::new();
        let db = TempDb::fresh();
        Sqlite {
            storage: db.open(&clock).await,
            clock,
            db,
        }
    }
    fn storage(&self) -> DynStorage {
        Arc::new(self.storage.clone())
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    async fn teardown(self) {
        self.storage.close().await;
        self.db
            .dir
            .close()
            .expect("remove the test's temporary directory");
    }
    /// A second connection to the file writes the row as a hand edit would; the
    /// storage's writer thread, which wakes parents, never sees it.
    async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> bool {
        let conn = rusqlite::Connection::open(self.db.path()).expect("open a second connection");
        conn.busy_timeout(Duration::from_secs(30))
            .expect("busy timeout");
        let now = self.clock.now().timestamp_micros();
        let changed = conn
            .execute(
                "UPDATE durable_jobs SET status = ?1, completed_at = ?2, updated_at = ?2, \
                 lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = ?3",
                rusqlite::params![status.to_string(), now, job],
            )
            .expect("hand edit");
        changed == 1
    }
}

durable_jobs::conformance_tests!(Sqlite);

/// The same suite on an in-memory database (one shared connection, reads through the
/// writer thread).
mod in_memory {
    use super::*;
    use durable_jobs_sqlite::SqliteOptions;

    struct SqliteMemory {
        storage: SqliteStorage,
        clock: ManualClock,
    }

    #[async_trait]
    impl ConformanceHarness for SqliteMemory {
        async fn setup() -> Self {
            let clock = ManualClock::new();
            SqliteMemory {
                storage: SqliteStorage::open_in_memory_with(
                    SqliteOptions::new().manual_clock(clock.clone()),
                )
                .await
                .expect("open in-memory sqlite"),
                clock,
            }
        }
        fn storage(&self) -> DynStorage {
            Arc::new(self.storage.clone())
        }
        async fn advance(&self, by: Duration) {
            self.clock.advance(by);
        }
        async fn teardown(self) {
            self.storage.close().await;
        }
        /// No second connection reaches an in-memory database: the row is written
        /// through the storage's own connection, by a plain `UPDATE` that wakes nobody.
        async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> bool {
            self.storage
                .finish_out_of_band(job, status)
                .await
                .expect("out-of-band write")
        }
    }

    durable_jobs::conformance_tests!(SqliteMemory);
}

// Real time: the writer thread is outside the runtime, so a paused clock would jump.
durable_jobs::simulation_tests!(Sqlite, seeds = 4, paused_time = false);
durable_jobs::fault_conformance_tests!(Sqlite);
