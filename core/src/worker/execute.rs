//! Running one claimed job and deciding what its outcome means.

use super::complete::{Finish, RunMeta};
use super::shared::{LeaseSignal, Shared};
use super::threads::AttemptThreads;
use crate::event::Event;
use crate::storage::ClaimedJob;
use crate::task::{TaskError, TaskErrorKind};
use crate::trace;
use crate::workflow::JobContext;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// Runs one attempt inside its `durable_jobs.attempt` span, with its trace context as the
/// task's current one (see [`crate::trace`]). The span and context are made here, when
/// the attempt starts; instrumenting the future covers its first poll on the queue loop
/// and its later polls as a task of its own.
pub(crate) fn execute(
    shared: Arc<Shared>,
    claimed: ClaimedJob,
    lost: LeaseSignal,
    threads: AttemptThreads,
) -> impl Future<Output = Result<Value, TaskError>> + Send + 'static {
    let (span, context) = trace::attempt_span(&claimed.job, claimed.lease.attempt, &shared.name);
    trace::in_attempt(context, run(shared, claimed, lost, threads)).instrument(span)
}

/// One attempt: hooks and events, the handler, the job's timeout.
async fn run(
    shared: Arc<Shared>,
    claimed: ClaimedJob,
    lost: LeaseSignal,
    threads: AttemptThreads,
) -> Result<Value, TaskError> {
    let job = &claimed.job;
    let queue = shared.queue.clone();
    if queue.observed() {
        queue.emit(Event::Started {
            job_id: job.id,
            task: job.task.clone(),
            attempt: claimed.lease.attempt,
        });
    }
    let Some(handler) = queue.handler(&job.task) else {
        return Err(TaskError::from_engine(crate::Error::UnknownTask(
            job.task.clone(),
        )));
    };
    let timeout = job.timeout();
    let job_id = job.id;
    let ctx = JobContext::new(
        claimed,
        queue,
        shared.checkpoints.clone(),
        shared.stopping.subscribe(),
        lost.clone(),
        threads.clone(),
    );
    let fut = handler.run(ctx.clone(), &ctx.job().payload);
    let timed = async move {
        match timeout {
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(TaskError::retry(format!(
                    "attempt timed out after {limit:?}"
                ))),
            },
            None => fut.await,
        }
    };
    let result = unless_lost(timed, lost, shared.opts.shutdown_grace, job_id).await;
    // A blocking handler's thread outlives a future dropped at its timeout (or after a
    // lost lease): the outcome, which may let the job be claimed again, waits for it,
    // while the heartbeat keeps renewing the lease.
    if threads.running() > 0 {
        tracing::warn!(
            job_id,
            "a blocking handler's thread outlived its attempt; the lease is held until it returns"
        );
        threads.all_returned().await;
    }
    // A workflow primitive that asked to suspend wins over what the handler made of its
    // error, unless the lease is gone.
    match (ctx.suspend_request(), &result) {
        (Some(_), Err(e)) if e.kind() == TaskErrorKind::LeaseLost => result,
        (Some(wake_at), _) => Err(TaskError::suspend(wake_at)),
        (None, _) => result,
    }
}

/// Runs the handler until it returns, or until its lease has been lost (the job was
/// cancelled or reclaimed, so another attempt may already run) and then at most `grace`
/// more: the handler sees the loss through [`JobContext::cancelled`] and may wrap up, and
/// one that does not is dropped, ending as a lost lease (nothing is written for it). The
/// grace is the worker's shutdown grace: a lost lease stops a handler as a shutdown would.
async fn unless_lost<F>(
    handler: F,
    lost: LeaseSignal,
    grace: std::time::Duration,
    job_id: crate::JobId,
) -> Result<Value, TaskError>
where
    F: Future<Output = Result<Value, TaskError>>,
{
    tokio::pin!(handler);
    tokio::select! {
        biased;
        r = &mut handler => return r,
        () = lost.lost() => {}
    };
    match tokio::time::timeout(grace, &mut handler).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                job_id,
                ?grace,
                "lease lost: the handler did not return within the grace period and was dropped"
            );
            Err(TaskError::from_engine(crate::Error::LeaseLost { job_id }))
        }
    }
}

/// How one attempt's handler ended.
pub(crate) enum Ended {
    /// It returned.
    Returned(Result<Value, TaskError>),
    /// It panicked, with this message.
    Panicked(String),
    /// It was aborted at the end of the shutdown grace period.
    Aborted,
}

/// Turns a finished handler into the outcome to write.
pub(crate) fn classify(shared: &Shared, meta: RunMeta, ended: Ended) -> Finish {
    let err = match ended {
        Ended::Returned(Ok(result)) => return Finish::Complete { meta, result },
        Ended::Returned(Err(e)) => e,
        Ended::Panicked(message) => TaskError::retry(format!("handler panicked: {message}")),
        Ended::Aborted => return Finish::Release { meta },
    };
    let attempts_left = meta.attempt < meta.max_attempts;
    let retry_in = match err.kind() {
        TaskErrorKind::LeaseLost => return Finish::Lost { meta },
        TaskErrorKind::Suspend(wake_at) => return Finish::Suspend { meta, wake_at },
        TaskErrorKind::Snooze(delay) => return Finish::Snooze { meta, delay },
        TaskErrorKind::Retry if attempts_left => {
            Some(shared.queue.retry_policy(&meta.task).delay(meta.attempt))
        }
        TaskErrorKind::RetryAfter(d) if attempts_left => Some(d),
        _ => None,
    };
    Finish::Fail {
        meta,
        error: err.message().to_string(),
        retry_in,
    }
}
