//! Durable calls: run a registered handler inline and checkpoint its outcome.

use super::context::JobContext;
use super::key::CheckpointKey;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::task::{Task, TaskError, TaskErrorKind};
use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use tracing::field::Empty;
use tracing::{Instrument, Span};

/// Runs the handler registered as `name` inline, inside `ctx`'s job, and checkpoints its
/// result. When the job is retried, a call that already finished returns its stored
/// result (or stored terminal error) without running again.
///
/// Only successes and terminal (non-retryable) errors are stored; a retryable error is
/// returned as is, and `?` then retries the whole job, which replays finished calls from
/// their checkpoints. The call's position is fixed when `call` is invoked, so calls must
/// be made in a deterministic order; a replay that meets a different task name at a
/// stored position fails the job with [`Error::NonDeterminism`]. A hash of the arguments
/// is stored with the checkpoint; a replay with other arguments fails the job with
/// [`Error::ArgumentsChanged`], or, for a task set to [`crate::Determinism::Warn`],
/// logs it, sends [`crate::Event::NonDeterminism`] and returns the stored result.
///
/// # Errors
/// The called handler's error; a non-retryable error for an unknown task, arguments that
/// do not fit, or a stored value that does not deserialize into `T`; a lost lease.
pub fn call<T, A>(
    ctx: &JobContext,
    name: &str,
    args: &A,
) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
    A: Serialize + ?Sized,
{
    let key = ctx.next_key();
    let span = crate::trace::leveled_span!(
        "durable_jobs.call",
        name,
        key = key.as_str(),
        replayed = Empty
    );
    let ctx = ctx.clone();
    let name = name.to_string();
    let args = serde_json::to_value(args).map_err(|e| {
        TaskError::no_retry(Error::InvalidPayload {
            task: name.clone(),
            message: e.to_string(),
        })
    });
    let recorder = span.clone();
    async move {
        let args = args?;
        let task = name.clone();
        let hash = super::args_hash(&args);
        checkpointed(
            &ctx,
            key,
            &name,
            Some(hash),
            &recorder,
            move |child: JobContext| async move {
                let handler = child
                    .queue()
                    .handler(&task)
                    .ok_or_else(|| TaskError::from_engine(Error::UnknownTask(task.clone())))?;
                handler.run(child, &args).await
            },
        )
        .await
    }
    .instrument(span)
}

/// Runs `run` once in the nested scope `key` and checkpoints its outcome under `name`
/// with the call's `args_hash` (none for steps); on replay returns the recorded outcome
/// without running. Shared by calls and steps; `span` is the call's or step's span,
/// which gets its `replayed` field here.
pub(crate) async fn checkpointed<T, F, Fut>(
    ctx: &JobContext,
    key: CheckpointKey,
    name: &str,
    args_hash: Option<String>,
    span: &Span,
    run: F,
) -> Result<T, TaskError>
where
    T: DeserializeOwned,
    F: FnOnce(JobContext) -> Fut,
    Fut: Future<Output = Result<Value, TaskError>>,
{
    let recorded = ctx.recorded(&key, name, args_hash.as_deref()).await?;
    span.record("replayed", recorded.is_some());
    let outcome = match recorded {
        Some(outcome) => outcome,
        None => {
            let outcome = match run(ctx.nested(key.clone())).await {
                Ok(v) => CheckpointOutcome::Ok(v),
                Err(e) if e.kind() == TaskErrorKind::NoRetry => {
                    CheckpointOutcome::Err(e.message().to_string())
                }
                Err(e) => return Err(e),
            };
            ctx.save_checkpoint(Checkpoint {
                key: key.to_string(),
                name: name.to_string(),
                outcome: outcome.clone(),
                created_at: None,
                args_hash,
            })
            .await
            .map_err(TaskError::from_engine)?;
            outcome
        }
    };
    decode(name, key.as_str(), outcome)
}

/// Turns a stored outcome into the typed result.
pub(crate) fn decode<T: DeserializeOwned>(
    name: &str,
    key: &str,
    outcome: CheckpointOutcome,
) -> Result<T, TaskError> {
    match outcome {
        CheckpointOutcome::Ok(v) => serde_json::from_value(v).map_err(|e| {
            TaskError::no_retry(format!(
                "the result of `{name}` at checkpoint `{key}` does not fit the expected type: {e}"
            ))
        }),
        CheckpointOutcome::Err(msg) => Err(TaskError::no_retry(msg)),
    }
}

impl JobContext {
    /// Same as [`call`]: runs a registered handler as a checkpointed step of this job.
    ///
    /// # Errors
    /// As [`call`].
    pub fn call<T, A>(
        &self,
        name: &str,
        args: &A,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
        A: Serialize + ?Sized,
    {
        call(self, name, args)
    }

    /// Calls a typed [`Task`] as a checkpointed step.
    ///
    /// # Errors
    /// As [`call`].
    pub fn call_task<T: Task>(
        &self,
        task: &T,
    ) -> impl Future<Output = Result<T::Output, TaskError>> + Send + 'static {
        call(self, T::NAME, task)
    }
}
