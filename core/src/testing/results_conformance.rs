//! Awaitable results: [`Queue::wait_for`] and [`Queue::submit`] through a real worker on
//! each backend. The [`crate::conformance_tests`] macro turns them into one test
//! each.
//!
//! Waits use a generous timeout only as a bound on a broken build; a passing case returns
//! as soon as the job finishes. A waiter that must be woken by the storage (not by this
//! process's own queue) polls once an hour, so only the backend's notification can wake
//! it in time.

use super::ConformanceHarness;
use crate::{
    Error, JobContext, JobOptions, NoRetry, Queue, RetryPolicy, Task, TaskError, Worker,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The bound on every wait that is expected to succeed.
const BOUND: Duration = Duration::from_secs(60);

fn queue<H: ConformanceHarness>(h: &H) -> Queue {
    let q = Queue::new(h.storage());
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    q
}

/// Runs a worker on `q` in the background until the returned guard is dropped.
struct Running(
    Option<crate::ShutdownHandle>,
    Option<tokio::task::JoinHandle<()>>,
);

impl Running {
    fn start(q: &Queue) -> Self {
        let worker =
            Worker::new(q.clone(), WorkerOptions::new().queue("default", 4)).expect("worker");
        let stop = worker.shutdown_handle();
        let task = tokio::spawn(async move {
            worker.run().await.expect("worker run");
        });
        Running(Some(stop), Some(task))
    }

    async fn stop(mut self) {
        if let Some(s) = self.0.take() {
            s.shutdown();
        }
        if let Some(t) = self.1.take() {
            t.await.expect("worker task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.shutdown();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Multiply {
    a: i64,
    b: i64,
}

impl Task for Multiply {
    const NAME: &'static str = "multiply";
    type Output = Product;
    async fn run(self, _ctx: JobContext) -> Result<Product, TaskError> {
        Ok(Product {
            value: self.a * self.b,
        })
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    value: i64,
}

/// A waiter started before any worker gets the typed result once a worker runs the job,
/// through a handle from `submit` and through `wait_for` alike.
pub async fn wait_for_returns_the_typed_result<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register_task::<Multiply>();
    let handle = q
        .submit(&Multiply { a: 6, b: 7 }, JobOptions::new())
        .await
        .expect("submit");
    let waiter = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait(BOUND).await })
    };
    let running = Running::start(&q);
    assert_eq!(
        waiter.await.expect("waiter").expect("result"),
        Product { value: 42 }
    );
    // A finished job answers at once, to any number of waiters.
    let again: Product = q.wait_for(handle.id(), BOUND).await.expect("again");
    assert_eq!(again.value, 42);
    let raw: serde_json::Value = q.wait_for(handle.id(), BOUND).await.expect("raw");
    assert_eq!(raw, serde_json::json!({"value": 42}));
    running.stop().await;
}

/// A job that fails for good gives `JobFailed` with its last error; retries in between
/// do not end the wait.
pub async fn wait_for_reports_failure_with_the_last_error<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("flaky", |ctx: JobContext, _: ()| async move {
        if ctx.attempt() < 3 {
            return Err::<(), _>(TaskError::retry(format!(
                "attempt {} failed",
                ctx.attempt()
            )));
        }
        Err(NoRetry("card declined").into())
    });
    let id = q
        .enqueue("flaky", &(), JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    let running = Running::start(&q);
    match q.wait_for::<()>(id, BOUND).await {
        Err(Error::JobFailed { job_id, error }) => {
            assert_eq!(job_id, id);
            assert_eq!(error, "card declined");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.attempt, 3, "the wait outlasted two retries");
    running.stop().await;
}

/// Cancelling a waiting job ends the wait with `JobCancelled`.
pub async fn wait_for_reports_cancellation<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("never_run", |_ctx: JobContext, _: ()| async move {
        Ok::<_, TaskError>(())
    });
    let id = q
        .enqueue("never_run", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.wait_for::<()>(id, BOUND).await })
    };
    assert!(q.cancel(id).await.expect("cancel"));
    match waiter.await.expect("waiter") {
        Err(Error::JobCancelled { job_id, error }) => {
            assert_eq!(job_id, id);
            assert_eq!(error, None);
        }
        other => panic!("expected JobCancelled, got {other:?}"),
    }
}

/// An unfinished job gives `WaitTimeout` and is left as it was; a missing job gives
/// `JobNotFound`; a result of another type gives `InvalidResult`.
pub async fn wait_for_times_out_and_reports_bad_ids_and_types<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("answer", |_ctx: JobContext, _: ()| async move {
        Ok::<_, TaskError>("forty-two")
    });
    let id = q
        .enqueue("answer", &(), JobOptions::new())
        .await
        .expect("enqueue");
    // No worker runs: the job cannot finish, whatever the timeout.
    let timeout = Duration::from_millis(20);
    match q.wait_for::<String>(id, timeout).await {
        Err(Error::WaitTimeout { job_id, timeout: t }) => assert_eq!((job_id, t), (id, timeout)),
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, crate::JobStatus::Pending);
    match q.wait_for::<String>(id + 1000, BOUND).await {
        Err(Error::JobNotFound(missing)) => assert_eq!(missing, id + 1000),
        other => panic!("expected JobNotFound, got {other:?}"),
    }
    let running = Running::start(&q);
    let text: String = q.wait_for(id, BOUND).await.expect("result");
    assert_eq!(text, "forty-two");
    match q.wait_for::<i64>(id, BOUND).await {
        Err(Error::InvalidResult { job_id, .. }) => assert_eq!(job_id, id),
        other => panic!("expected InvalidResult, got {other:?}"),
    }
    running.stop().await;
}

/// Tells a test when a queue's storage answered a given call.
struct CallSeen {
    operation: &'static str,
    seen: std::sync::Arc<tokio::sync::Notify>,
}

impl crate::StorageLayer for CallSeen {
    fn on_call(&self, call: &crate::StorageCall<'_>) {
        if call.operation == self.operation && call.error.is_none() {
            // A stored permit: the test may start waiting after this ran.
            self.seen.notify_one();
        }
    }
}

/// A waiter on one queue is woken by the storage when a worker on another queue (another
/// handle on the same storage, as another process would be) finishes the job. The
/// waiter polls once an hour, so only the backend's notification wakes it in time; the
/// worker starts only after the waiter's first read found the job unfinished.
pub async fn wait_for_wakes_on_the_storage_notification<H: ConformanceHarness>(h: &H) {
    let seen = std::sync::Arc::new(tokio::sync::Notify::new());
    let layer = CallSeen {
        operation: "watch_job",
        seen: seen.clone(),
    };
    let waiting = Queue::with_layers(h.storage(), vec![std::sync::Arc::new(layer)]);
    waiting.set_wait_poll_interval(Duration::from_secs(3600));
    let working = queue(h);
    working.register("double", |_ctx: JobContext, n: i64| async move {
        Ok::<_, TaskError>(n * 2)
    });
    let id = working
        .enqueue("double", &21, JobOptions::new())
        .await
        .expect("enqueue");
    let waiter = tokio::spawn(async move { waiting.wait_for::<i64>(id, BOUND).await });
    seen.notified().await;
    let running = Running::start(&working);
    assert_eq!(waiter.await.expect("waiter").expect("result"), 42);
    running.stop().await;
}
