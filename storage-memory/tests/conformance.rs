//! Every conformance suite (storage calls, and the engine through a real Queue and
//! Worker) on the memory backend with a manual clock.

use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{DynStorage, JobId, JobStatus, ManualClock, Storage};
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
    async fn teardown(self) {
        // In debug builds, reading the counts checks the counts kept as jobs are written
        // against a walk of every job: after every case, whatever writes it made.
        self.storage.counts().await.expect("counts");
    }
    async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> bool {
        self.storage.finish_out_of_band(job, status)
    }
}

durable_jobs::conformance_tests!(Memory);

// Paused time: in-process storage waits on nothing outside the runtime.
durable_jobs::simulation_tests!(Memory, seeds = 300, paused_time = true);
durable_jobs::fault_conformance_tests!(Memory);
