//! Durable calls: run a registered handler inline and checkpoint its outcome.

use super::context::JobContext;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::task::{Task, TaskError, TaskErrorKind};
use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;

/// Runs the handler registered as `name` inline, inside `ctx`'s job, and checkpoints its
/// result. When the job is retried, a call that already finished returns its stored
/// result (or stored terminal error) without running again.
///
/// Only successes and terminal (non-retryable) errors are stored; a retryable error is
/// returned as is, and `?` then retries the whole job, which replays finished calls from
/// their checkpoints. The call's position is fixed when `call` is invoked, so calls must
/// be made in a deterministic order; a replay that meets a different task name at a
/// stored position fails the job with [`Error::NonDeterminism`].
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
    let ctx = ctx.clone();
    let name = name.to_string();
    let args = serde_json::to_value(args).map_err(|e| {
        TaskError::no_retry(Error::InvalidPayload {
            task: name.clone(),
            message: e.to_string(),
        })
    });
    async move {
        let args = args?;
        let stored = ctx.checkpoint(&key).await.map_err(TaskError::from_engine)?;
        let outcome = match stored {
            Some(cp) if cp.name != name => {
                return Err(TaskError::from_engine(Error::NonDeterminism {
                    job_id: ctx.job_id(),
                    key: key.to_string(),
                    recorded: cp.name,
                    found: name,
                }));
            }
            Some(cp) => cp.outcome,
            None => {
                let handler = ctx
                    .queue()
                    .handler(&name)
                    .ok_or_else(|| TaskError::from_engine(Error::UnknownTask(name.clone())))?;
                let child = ctx.nested(key.clone());
                let outcome = match handler.run(child, args).await {
                    Ok(v) => CheckpointOutcome::Ok(v),
                    Err(e) if e.kind() == TaskErrorKind::NoRetry => {
                        CheckpointOutcome::Err(e.message().to_string())
                    }
                    Err(e) => return Err(e),
                };
                ctx.save_checkpoint(Checkpoint {
                    key: key.to_string(),
                    name: name.clone(),
                    outcome: outcome.clone(),
                })
                .await
                .map_err(TaskError::from_engine)?;
                outcome
            }
        };
        match outcome {
            CheckpointOutcome::Ok(v) => serde_json::from_value(v).map_err(|e| {
                TaskError::no_retry(format!(
                    "the result of call `{name}` at checkpoint `{key}` does not fit the expected type: {e}"
                ))
            }),
            CheckpointOutcome::Err(msg) => Err(TaskError::no_retry(msg)),
        }
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
