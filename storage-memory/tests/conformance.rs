//! The shared storage conformance suite on the memory backend.

use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{DynStorage, ManualClock};
use durable_jobs_memory::MemoryStorage;
use std::sync::Arc;
use std::time::Duration;

struct Memory {
    storage: MemoryStorage,
    clock: ManualClock,
}

#[async_trait]
impl ConformanceHarness for Memory {
    async fn setup() -> Self {
        let clock = ManualClock::new();
        Memory {
            storage: MemoryStorage::with_clock(clock.clone()),
            clock,
        }
    }
    fn storage(&self) -> DynStorage {
        Arc::new(self.storage.clone())
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    async fn teardown(self) {}
}

durable_jobs::storage_conformance_tests!(Memory);
durable_jobs::storage_workflow_conformance_tests!(Memory);
durable_jobs::engine_conformance_tests!(Memory);
durable_jobs::storage_operations_conformance_tests!(Memory);
durable_jobs::engine_operations_conformance_tests!(Memory);
durable_jobs::storage_metadata_conformance_tests!(Memory);
durable_jobs::storage_delete_conformance_tests!(Memory);
durable_jobs::storage_flow_conformance_tests!(Memory);
