//! Direct execution: one attempt of a handler with a payload, its return value handed
//! straight back to the test.

use super::{KitError, TestKit};
use crate::error::Error;
use crate::job::JobId;
use crate::options::JobOptions;
use crate::storage::{DequeueParams, Failure, Storage};
use crate::task::{panic_message, TaskError, TaskErrorKind};
use crate::worker::DEFAULT_LEASE_DURATION;
use crate::workflow::JobContext;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Performed jobs go to a queue of their own, with the highest priority, so the claim
/// that starts the attempt takes the job just enqueued: the only others there are
/// earlier performed jobs that suspended.
const PERFORM_QUEUE: &str = "testkit-perform";

impl TestKit {
    /// Runs one attempt of `task`'s handler with `args` now and returns what the handler
    /// returned, like Oban's `perform_job`. The arguments are checked against the
    /// handler's type first, as at enqueue. The attempt belongs to a real job (in the queue
    /// `testkit-perform`, with no retries), so durable calls, steps, sleeps and
    /// children work and leave their checkpoints; the job records the outcome (completed,
    /// failed, or waiting when the handler suspended, which comes back as an error whose
    /// [`TaskError::is_suspend`] is true). Hooks, events and the job's timeout are the
    /// worker's and do not apply; a panic comes back as a retryable error.
    ///
    /// # Errors
    /// [`Error::UnknownTask`], [`Error::InvalidPayload`] and storage errors; the
    /// handler's own error is the inner `Err`.
    pub async fn perform_job<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<Result<Value, TaskError>, KitError> {
        let payload = serde_json::to_value(args).map_err(|e| Error::InvalidPayload {
            task: task.to_string(),
            message: e.to_string(),
        })?;
        let handler = self
            .queue
            .handler(task)
            .ok_or_else(|| Error::UnknownTask(task.to_string()))?;
        let options = JobOptions::new()
            .queue(PERFORM_QUEUE)
            .priority(i32::MAX)
            .retries(0);
        let job = self.queue.build_job(task, payload, &options)?;
        let id = self.queue.enqueue_job(job).await?.id;
        let storage = self.queue.storage();
        let claimed = storage
            .dequeue(DequeueParams {
                queues: vec![PERFORM_QUEUE.to_string()],
                tasks: vec![task.to_string()],
                limit: 1,
                lease_duration: DEFAULT_LEASE_DURATION,
                holder: "testkit".to_string(),
                forbidden_flags: Vec::new(),
            })
            .await?;
        let Some(claimed) = claimed.into_iter().next() else {
            return Err(not_claimed(id));
        };
        if claimed.job.id != id {
            // Another performed job resumed first; leave it to the kit's runs.
            storage.release(&claimed.lease).await?;
            return Err(not_claimed(id));
        }
        let lease = claimed.lease.clone();
        // Held for the attempt: a dropped sender would read as a cancellation.
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let lost = crate::worker::shared::LeaseSignal::new();
        let threads = lost.threads();
        let ctx = JobContext::new(
            claimed,
            self.queue.clone(),
            crate::workflow::CheckpointCommitter::start(
                std::sync::Arc::new(storage.clone()),
                crate::worker::DEFAULT_CHECKPOINT_WRITERS,
            ),
            stop_rx,
            lost,
            threads.clone(),
        );
        let fut = handler.run(ctx.clone(), &ctx.job().payload);
        let mut outcome = match (CatchUnwind(fut)).await {
            Ok(r) => r,
            Err(panic) => Err(TaskError::retry(format!(
                "handler panicked: {}",
                panic_message(panic)
            ))),
        };
        // A blocking thread the handler started outlives its future: the attempt ends
        // when the last one returns, as on a worker.
        threads.all_returned().await;
        if let Some(wake_at) = ctx.suspend_request() {
            if !matches!(&outcome, Err(e) if e.kind() == TaskErrorKind::LeaseLost) {
                outcome = Err(TaskError::suspend(wake_at));
            }
        }
        match &outcome {
            Ok(v) => storage.complete(&lease, v.clone()).await?,
            Err(e) => match e.kind() {
                TaskErrorKind::Suspend(wake_at) => storage.suspend(&lease, wake_at).await?,
                TaskErrorKind::LeaseLost => {}
                _ => {
                    storage
                        .fail(
                            &lease,
                            Failure {
                                error: e.message().to_string(),
                                retry_in: None,
                            },
                        )
                        .await?
                }
            },
        }
        Ok(outcome)
    }
}

/// The job just enqueued to perform was not the one claimed: its queue was paused by
/// the test, or an earlier performed job fell due at the same moment.
fn not_claimed(id: JobId) -> KitError {
    KitError::Engine(Error::InvalidOption {
        option: "perform_job",
        message: format!("job {id} enqueued to perform could not be claimed"),
    })
}

/// Polls a future, catching a panic from it, so a panicking handler becomes an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.0);
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}
