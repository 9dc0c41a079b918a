//! Engine tests on the memory backend with a manual clock: no sleeping for time to pass.

mod enqueue;
mod events;
mod execution;
mod metrics;
mod retries;
mod shutdown;
mod testkit;
mod time_zones;
mod tracing;
mod workflow;

use durable_jobs::{JobId, JobStatus, ManualClock, Queue, Worker, WorkerOptions};
use durable_jobs_memory::MemoryStorage;
use std::sync::Arc;

/// A queue on fresh memory storage driven by a manual clock.
pub fn setup() -> (Queue, ManualClock) {
    let clock = ManualClock::new();
    let queue = Queue::new(Arc::new(MemoryStorage::with_clock(clock.clone())));
    (queue, clock)
}

/// A worker on the default queue.
pub fn worker(queue: &Queue, concurrency: usize) -> Worker {
    Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("default", concurrency),
    )
    .expect("valid worker options")
}

/// The job's status.
pub async fn status(queue: &Queue, id: JobId) -> JobStatus {
    queue
        .get_job(id)
        .await
        .expect("get_job")
        .expect("job exists")
        .status
}
