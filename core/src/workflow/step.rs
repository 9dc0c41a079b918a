//! Steps: any closure, run once and checkpointed like a call.

use super::context::JobContext;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::task::{TaskError, TaskErrorKind};
use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;

impl JobContext {
    /// Runs `f` once as a checkpointed step named `name`, for side effects that are not
    /// registered handlers (an HTTP call, an email). On a retry a finished step returns
    /// its stored result without running. The closure gets a context scoped to the step,
    /// so calls and steps made inside it replay too. Same keys, determinism check and
    /// error rules as [`super::call`]: only successes and terminal errors are stored.
    ///
    /// # Errors
    /// The closure's error; non-determinism; a stored value that does not fit `T`.
    pub fn step<T, F, Fut>(
        &self,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
    {
        let key = self.next_key();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            if let Some(cp) = ctx.checkpoint(&key).await.map_err(TaskError::from_engine)? {
                if cp.name != name {
                    return Err(TaskError::from_engine(Error::NonDeterminism {
                        job_id: ctx.job_id(),
                        key: key.to_string(),
                        recorded: cp.name,
                        found: name,
                    }));
                }
                return decode(&name, &key.to_string(), cp.outcome);
            }
            let outcome = match f(ctx.nested(key.clone())).await {
                Ok(v) => CheckpointOutcome::Ok(serde_json::to_value(&v).map_err(|e| {
                    TaskError::no_retry(format!(
                        "the result of step `{name}` does not serialize: {e}"
                    ))
                })?),
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
            decode(&name, &key.to_string(), outcome)
        }
    }
}

/// Turns a stored outcome into the step's typed result.
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
