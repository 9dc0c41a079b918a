//! The shared storage, workflow, engine and operations conformance suites on a fresh SQLite file per
//! test, and on an in-memory database.

use crate::TempDb;
use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{DynStorage, ManualClock};
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
}

durable_jobs::storage_conformance_tests!(Sqlite);
durable_jobs::storage_workflow_conformance_tests!(Sqlite);
durable_jobs::engine_conformance_tests!(Sqlite);
durable_jobs::storage_operations_conformance_tests!(Sqlite);
durable_jobs::engine_operations_conformance_tests!(Sqlite);
durable_jobs::storage_metadata_conformance_tests!(Sqlite);
durable_jobs::storage_delete_conformance_tests!(Sqlite);
durable_jobs::storage_flow_conformance_tests!(Sqlite);

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
    }

    durable_jobs::storage_conformance_tests!(SqliteMemory);
    durable_jobs::storage_workflow_conformance_tests!(SqliteMemory);
    durable_jobs::engine_conformance_tests!(SqliteMemory);
    durable_jobs::storage_operations_conformance_tests!(SqliteMemory);
    durable_jobs::engine_operations_conformance_tests!(SqliteMemory);
    durable_jobs::storage_metadata_conformance_tests!(SqliteMemory);
    durable_jobs::storage_delete_conformance_tests!(SqliteMemory);
    durable_jobs::storage_flow_conformance_tests!(SqliteMemory);
}
