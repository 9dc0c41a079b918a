//! Steps: any closure, run once and checkpointed like a call.

use super::call::checkpointed;
use super::context::JobContext;
use crate::task::TaskError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use tracing::field::Empty;
use tracing::Instrument;

impl JobContext {
    /// Runs `f` once as a checkpointed step named `name`, for side effects that are not
    /// registered handlers (an HTTP call, an email). On a retry a finished step returns
    /// its stored result without running. The closure gets a context scoped to the step,
    /// so calls and steps made inside it replay too. Same keys, determinism check and
    /// error rules as [`super::call()`]: only successes and terminal errors are stored.
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
        let span = crate::trace::leveled_span!(
            "durable_jobs.step",
            name,
            key = key.as_str(),
            replayed = Empty
        );
        let recorder = span.clone();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let label = name.clone();
            checkpointed(&ctx, key, &name, None, &recorder, move |child| async move {
                let value = f(child).await?;
                result_value(&label, &value)
            })
            .await
        }
        .instrument(span)
    }
}

/// A step's result as the JSON its checkpoint stores; one that does not serialize is a
/// terminal error naming the step (the same on every path that stores a step).
pub(super) fn result_value<T: Serialize>(name: &str, value: &T) -> Result<Value, TaskError> {
    serde_json::to_value(value).map_err(|e| {
        TaskError::no_retry(format!(
            "the result of step `{name}` does not serialize: {e}"
        ))
    })
}
