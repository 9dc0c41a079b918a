//! When the worker claims: a finished job that can free no other work sends no claim.
//!
//! On the memory backend, whose wake-ups are synchronous: an enqueue's wake has landed
//! before the worker starts, so the claims counted are exactly the worker's own. (On
//! PostgreSQL the enqueue's NOTIFY may land at any point, and a claim it causes would
//! make an exact count flaky; the worker loop under test is the same for every backend.)

use durable_jobs::{
    JobOptions, Queue, StorageCall, StorageLayer, TaskError, Worker, WorkerOptions,
};
use durable_jobs_memory::MemoryStorage;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records the order of the storage calls a queue makes.
#[derive(Default)]
struct Calls(Mutex<Vec<&'static str>>);

impl StorageLayer for Calls {
    fn on_call(&self, call: &StorageCall<'_>) {
        if matches!(call.operation, "dequeue" | "complete_many" | "complete") {
            self.0.lock().expect("calls").push(call.operation);
        }
    }
}

/// A queue whose claims and completions are recorded, with one job of `task` waiting.
async fn queue_with_one_job(options: JobOptions) -> (Queue, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let queue = Queue::with_layers(Arc::new(MemoryStorage::new()), vec![calls.clone()]);
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    queue.enqueue("t", &(), options).await.expect("enqueue");
    (queue, calls)
}

/// Drains with polling out of the way: only wake-ups can cause a claim.
async fn drain(queue: &Queue) {
    let report = Worker::new(
        queue.clone(),
        WorkerOptions::new().poll_interval(Duration::from_secs(3600)),
    )
    .expect("options")
    .drain()
    .await
    .expect("drain");
    assert_eq!(report.completed, 1);
}

/// One claim takes the job, and the worker is idle once it finished: a plain job's
/// completion makes nothing claimable, so no claim follows it (one did, for every
/// completion batch, which doubled the claims of a quiet queue).
#[tokio::test]
async fn a_plain_job_s_completion_sends_no_claim_after_it() {
    let (queue, calls) = queue_with_one_job(JobOptions::new()).await;
    drain(&queue).await;
    let calls = calls.0.lock().expect("calls").clone();
    assert_eq!(calls.first(), Some(&"dequeue"));
    assert_eq!(
        calls.iter().filter(|c| **c == "dequeue").count(),
        1,
        "claims and completions: {calls:?}"
    );
}

/// A keyed job's completion may let its key's next job start, so the worker looks again
/// after it.
#[tokio::test]
async fn a_keyed_job_s_completion_is_followed_by_a_claim() {
    let (queue, calls) = queue_with_one_job(JobOptions::new().serial_key("k")).await;
    drain(&queue).await;
    let calls = calls.0.lock().expect("calls").clone();
    assert_eq!(
        calls.last(),
        Some(&"dequeue"),
        "claims and completions: {calls:?}"
    );
}
