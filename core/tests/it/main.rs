//! Core tests on the memory backend with a manual clock: validation that needs no
//! storage, and what needs a process-wide recorder or subscriber (metrics, tracing) or
//! is about time zones, and claim counts that only a backend with synchronous wake-ups
//! makes exact. Engine behaviour is in the conformance suite, on every backend.

mod claims;
mod enqueue;
mod metrics;
mod testkit;
mod time_zones;
mod tracing;

use durable_jobs::{ManualClock, Queue, Worker, WorkerOptions};
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
