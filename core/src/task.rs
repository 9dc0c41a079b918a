//! What a handler returns when it fails, typed tasks, and the type-erased handlers the
//! queue stores.

use crate::workflow::JobContext;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// Retry with the task's backoff while attempts remain.
    Retry,
    /// Retry after exactly this delay while attempts remain.
    RetryAfter(Duration),
    /// Fail the job now, whatever attempts remain.
    NoRetry,
    /// The job's lease was lost (reclaimed or cancelled): this worker must stop writing.
    LeaseLost,
    /// A replay met a different call than its checkpoint recorded: fail the job now,
    /// without recording a checkpoint.
    NonDeterminism,
    /// The workflow waits (a sleep, a signal, children): the job suspends to `waiting`
    /// and frees its worker slot until the time given, or until it is woken. Propagate it
    /// with `?`; it is not a failure.
    Suspend(Option<chrono::DateTime<chrono::Utc>>),
    /// Snooze: run the job again after this delay without spending an attempt (see
    /// [`Snooze`]). A task may snooze a limited number of times
    /// ([`crate::Queue::set_max_snoozes`]); past that the job fails.
    Snooze(Duration),
}

/// The error a handler returns. Any `std::error::Error` converts into a retryable
/// `TaskError` with `?`; wrap in [`NoRetry`] or [`RetryAfter`] to choose otherwise.
///
/// ```
/// use durable_jobs::{NoRetry, RetryAfter, TaskError};
/// use std::time::Duration;
/// let retry: TaskError = "not yet".parse::<i32>().unwrap_err().into();
/// let fatal: TaskError = NoRetry("card declined").into();
/// let later: TaskError = RetryAfter(Duration::from_secs(60), "rate limited").into();
/// assert!(retry.is_retryable() && !fatal.is_retryable() && later.is_retryable());
/// ```
pub struct TaskError {
    kind: TaskErrorKind,
    message: String,
}

impl TaskError {
    /// A retryable error with this message.
    pub fn retry(message: impl fmt::Display) -> Self {
        Self::new(TaskErrorKind::Retry, message)
    }

    /// A non-retryable error with this message.
    pub fn no_retry(message: impl fmt::Display) -> Self {
        Self::new(TaskErrorKind::NoRetry, message)
    }

    /// A retryable error that asks for this delay before the next attempt.
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        Self::new(TaskErrorKind::RetryAfter(delay), message)
    }

    /// An error of the given kind.
    pub fn new(kind: TaskErrorKind, message: impl fmt::Display) -> Self {
        TaskError {
            kind,
            message: message.to_string(),
        }
    }

    /// How the attempt should be treated.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// The message stored as the job's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error that suspends a workflow until `wake_at` or until it is woken.
    pub fn suspend(wake_at: Option<chrono::DateTime<chrono::Utc>>) -> Self {
        let message = match wake_at {
            Some(t) => format!("suspended until {t}"),
            None => "suspended until woken".to_string(),
        };
        Self::new(TaskErrorKind::Suspend(wake_at), message)
    }

    /// The outcome that reschedules the job after `delay` without spending an attempt.
    pub fn snooze(delay: Duration) -> Self {
        Self::new(
            TaskErrorKind::Snooze(delay),
            format!("snoozed for {delay:?}"),
        )
    }

    /// True when this is a suspension rather than a failure.
    pub fn is_suspend(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Suspend(_))
    }

    /// True when another attempt may follow.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            TaskErrorKind::Retry | TaskErrorKind::RetryAfter(_)
        )
    }

    /// Maps an engine error to how the attempt should end: a lost lease stops the
    /// attempt, bad input and non-determinism fail the job, storage trouble retries.
    pub fn from_engine(err: crate::Error) -> Self {
        use crate::Error as E;
        let kind = match &err {
            E::LeaseLost { .. } => TaskErrorKind::LeaseLost,
            E::NonDeterminism { .. } | E::ArgumentsChanged { .. } => TaskErrorKind::NonDeterminism,
            E::UnknownTask(_)
            | E::InvalidPayload { .. }
            | E::PayloadTooLarge { .. }
            | E::InvalidOption { .. }
            | E::InvalidQueueName(_)
            | E::Serialization(_)
            | E::JobFinished { .. } => TaskErrorKind::NoRetry,
            _ => TaskErrorKind::Retry,
        };
        TaskError::new(kind, err)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({:?}: {})", self.kind, self.message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        TaskError::retry(err)
    }
}

/// Wraps an error so the job fails at once, without retries.
#[derive(Debug, Clone)]
pub struct NoRetry<E>(pub E);

impl<E: fmt::Display> From<NoRetry<E>> for TaskError {
    fn from(e: NoRetry<E>) -> Self {
        TaskError::no_retry(e.0)
    }
}

/// Wraps an error so the next attempt waits exactly this delay.
#[derive(Debug, Clone)]
pub struct RetryAfter<E>(pub Duration, pub E);

impl<E: fmt::Display> From<RetryAfter<E>> for TaskError {
    fn from(e: RetryAfter<E>) -> Self {
        TaskError::retry_after(e.0, e.1)
    }
}

/// Reschedules the job after this delay without spending an attempt, as River's and
/// Oban's snooze: for a job that finds it is too early (a resource not ready yet, a
/// rate limit upstream) rather than failing. The attempt is recorded as `snoozed` in the
/// job's history. After [`crate::Queue::max_snoozes`] snoozes the job fails instead.
///
/// ```
/// use durable_jobs::{Snooze, TaskError};
/// use std::time::Duration;
/// let later: TaskError = Snooze(Duration::from_secs(30)).into();
/// assert!(!later.is_retryable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snooze(pub Duration);

impl From<Snooze> for TaskError {
    fn from(s: Snooze) -> Self {
        TaskError::snooze(s.0)
    }
}

/// A task as a type: its arguments are the type's fields, its name a constant.
///
/// ```
/// use durable_jobs::{JobContext, Task, TaskError};
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
/// impl Task for SendEmail {
///     const NAME: &'static str = "send_email";
///     type Output = ();
///     async fn run(self, _ctx: JobContext) -> Result<(), TaskError> { Ok(()) }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The name jobs of this task are stored under.
    const NAME: &'static str;
    /// What the task returns (stored as the job's result, returned by `call`).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Runs one attempt.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// A boxed handler future.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;

/// Decodes its arguments from the borrowed payload before it returns the future, so the
/// worker need not copy a claimed job's payload for the handler.
type HandlerFn = dyn Fn(JobContext, &Value) -> HandlerFuture + Send + Sync;

/// A registered handler with its argument check.
pub(crate) struct HandlerEntry {
    run: Box<HandlerFn>,
    check: fn(&Value) -> Result<(), String>,
}

impl HandlerEntry {
    pub(crate) fn run(&self, ctx: JobContext, payload: &Value) -> HandlerFuture {
        (self.run)(ctx, payload)
    }

    /// Checks that a payload deserializes into the handler's argument type.
    pub(crate) fn check(&self, payload: &Value) -> Result<(), String> {
        (self.check)(payload)
    }

    pub(crate) fn new_async<A, R, F, Fut>(name: &str, f: F) -> Arc<Self>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let name: Arc<str> = name.into();
        Arc::new(HandlerEntry {
            run: Box::new(
                move |ctx, payload: &Value| match decode::<A>(&name, payload) {
                    Ok(args) => {
                        let fut = f(ctx, args);
                        let name = name.clone();
                        Box::pin(async move { encode(&name, fut.await?) })
                    }
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                },
            ),
            check: check::<A>,
        })
    }

    pub(crate) fn new_blocking<A, R, F>(name: &str, f: F) -> Arc<Self>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Result<R, TaskError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Self::new_async(name, move |ctx: JobContext, args: A| {
            let f = f.clone();
            // Counted until the thread returns, even when this future is dropped first
            // (a timeout, a shutdown): the worker holds the lease that long.
            let token = ctx.blocking_thread();
            async move {
                let run = move || {
                    let _running = token;
                    f(args)
                };
                match tokio::task::spawn_blocking(run).await {
                    Ok(r) => r,
                    Err(e) => Err(TaskError::retry(format!(
                        "handler panicked: {}",
                        panic_message(e.into_panic())
                    ))),
                }
            }
        })
    }
}

fn check<A: DeserializeOwned>(payload: &Value) -> Result<(), String> {
    A::deserialize(payload)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn decode<A: DeserializeOwned>(task: &str, payload: &Value) -> Result<A, TaskError> {
    A::deserialize(payload).map_err(|e| {
        TaskError::no_retry(crate::Error::InvalidPayload {
            task: task.into(),
            message: e.to_string(),
        })
    })
}

fn encode<R: Serialize>(task: &str, r: R) -> Result<Value, TaskError> {
    serde_json::to_value(r).map_err(|e| {
        TaskError::no_retry(format!(
            "the result of task `{task}` does not serialize: {e}"
        ))
    })
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
