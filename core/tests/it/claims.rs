//! When the worker claims: a finished job that can free no other work sends no claim.
//!
//! On the memory backend, whose wake-ups are synchronous, on tokio's current-thread
//! runtime: an enqueue's wake has landed before the call returns, so the order of the
//! calls the layer records is the order the worker made them. (On PostgreSQL the
//! enqueue's NOTIFY may land at any point, and a claim it causes would blur that order;
//! the worker loop under test is the same for every backend.)

use durable_jobs::{
    Event, JobOptions, Queue, StorageCall, StorageLayer, TaskError, Worker, WorkerOptions,
};
use durable_jobs_memory::MemoryStorage;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records the order of the storage calls that add, claim and finish jobs.
#[derive(Default)]
struct Calls(Mutex<Vec<&'static str>>);

impl StorageLayer for Calls {
    fn on_call(&self, call: &StorageCall<'_>) {
        if matches!(
            call.operation,
            "enqueue" | "enqueue_many" | "dequeue" | "complete_many" | "complete"
        ) {
            self.0.lock().expect("calls").push(call.operation);
        }
    }
}

impl Calls {
    fn seen(&self) -> Vec<&'static str> {
        self.0.lock().expect("calls").clone()
    }
}

/// A queue whose calls are recorded, with a no-op task `t`.
fn recorded_queue() -> (Queue, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let queue = Queue::with_layers(Arc::new(MemoryStorage::new()), vec![calls.clone()]);
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    (queue, calls)
}

/// Polling out of the way: only wake-ups can cause a claim.
fn options() -> WorkerOptions {
    WorkerOptions::new().poll_interval(Duration::from_secs(3600))
}

/// A running worker gets plain jobs one at a time, each enqueued once the one before
/// completed: every claim after a completion follows an enqueue, never the completion
/// itself (before, each completion batch woke the loop for a claim that found nothing,
/// which doubled the claims of a quiet queue).
#[tokio::test]
async fn a_plain_job_s_completion_sends_no_claim_after_it() {
    let (queue, calls) = recorded_queue();
    let worker = Worker::new(queue.clone(), options()).expect("options");
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    let mut events = queue.events();
    for _ in 0..5 {
        let id = queue
            .enqueue("t", &(), JobOptions::new())
            .await
            .expect("enqueue");
        events
            .wait_for(|e| matches!(e, Event::Completed { job_id, .. } if *job_id == id))
            .await
            .expect("completed");
        // Whatever the completion's write woke has run by the time its waiter reads the
        // job back.
        queue
            .wait_for::<()>(id, Duration::from_secs(10))
            .await
            .expect("finished");
    }
    stop.shutdown();
    assert_eq!(run.await.expect("join").expect("run").completed, 5);
    let seen = calls.seen();
    let mut since_completion: Option<Vec<&str>> = None;
    for op in &seen {
        match *op {
            "complete_many" | "complete" => since_completion = Some(Vec::new()),
            "dequeue" => {
                if let Some(between) = &since_completion {
                    assert!(
                        between.iter().any(|o| o.starts_with("enqueue")),
                        "a claim right after a completion: {seen:?}"
                    );
                }
            }
            other => {
                if let Some(between) = &mut since_completion {
                    between.push(other);
                }
            }
        }
    }
    assert_eq!(
        seen.iter().filter(|o| o.starts_with("complete")).count(),
        5,
        "{seen:?}"
    );
}

/// A drain ends only after a claim found the queue empty once its jobs had run: a
/// handler may have enqueued through a connection whose wake-up is still on its way.
#[tokio::test]
async fn a_drain_confirms_with_a_claim_that_the_queue_is_empty() {
    let (queue, calls) = recorded_queue();
    queue
        .enqueue("t", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let report = Worker::new(queue.clone(), options())
        .expect("options")
        .drain()
        .await
        .expect("drain");
    assert_eq!(report.completed, 1);
    // The claim that took the job, and the one that found nothing after it ran.
    let seen = calls.seen();
    assert_eq!(
        seen.iter().filter(|o| **o == "dequeue").count(),
        2,
        "{seen:?}"
    );
}

/// A keyed job's completion lets its key's next job start, so it wakes the loop: with
/// polling out of the way, the second job of a key runs only because of that wake.
#[tokio::test]
async fn a_keyed_job_s_completion_starts_its_key_s_next_job() {
    let (queue, _calls) = recorded_queue();
    let mut events = queue.events();
    let keyed = || JobOptions::new().serial_key("k");
    let first = queue.enqueue("t", &(), keyed()).await.expect("enqueue");
    let second = queue.enqueue("t", &(), keyed()).await.expect("enqueue");
    let worker = Worker::new(queue.clone(), options()).expect("options");
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    for id in [first, second] {
        // A bound, not a wait: without the wake the second job never starts.
        tokio::time::timeout(
            Duration::from_secs(10),
            events.wait_for(|e| matches!(e, Event::Completed { job_id, .. } if *job_id == id)),
        )
        .await
        .expect("the key's next job ran")
        .expect("completed");
    }
    stop.shutdown();
    assert_eq!(run.await.expect("join").expect("run").completed, 2);
}
