//! Transactional steps: the building block a SQL backend uses to commit a step's own
//! writes and its checkpoint in one transaction, so the step's effect on the database
//! happens exactly once. Applications call the backends' wrappers
//! (`durable_jobs_postgres::PostgresStepExt::pg_step`,
//! `durable_jobs_sqlite::SqliteStepExt::sqlite_step`), not this.

use super::call::decode;
use super::context::JobContext;
use super::key::CheckpointKey;
use crate::job::{Checkpoint, CheckpointOutcome, Lease};
use crate::task::{TaskError, TaskErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use tracing::field::Empty;
use tracing::Instrument;

/// What a backend needs to commit a transactional step: the lease that fences it and
/// the checkpoint to write beside the step's own writes.
#[derive(Debug, Clone)]
pub struct TransactionalStep {
    lease: Lease,
    key: CheckpointKey,
    name: String,
}

impl TransactionalStep {
    /// The lease the transaction must find current (job running, same token) before it
    /// commits; otherwise it rolls back and reports [`crate::Error::LeaseLost`].
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The step's checkpoint key.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// The step's name, as stored with its checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's result as the JSON its checkpoint stores; a result that does not
    /// serialize is a terminal error, as for [`JobContext::step`].
    ///
    /// # Errors
    /// [`TaskError::no_retry`] naming the step when `value` does not serialize.
    pub fn value_of<T: serde::Serialize>(&self, value: &T) -> Result<Value, TaskError> {
        super::step::result_value(&self.name, value)
    }

    /// The checkpoint to write in the step's transaction once it produced `value`.
    pub fn checkpoint(&self, value: Value) -> Checkpoint {
        Checkpoint {
            key: self.key.to_string(),
            name: self.name.clone(),
            outcome: CheckpointOutcome::Ok(value),
            created_at: None,
            args_hash: None,
        }
    }
}

impl JobContext {
    /// For backend crates: runs a step whose success checkpoint the backend writes
    /// itself, in the same transaction as the step's own writes. Keys, replay and the
    /// name check are those of [`JobContext::step`]: a step that already has a
    /// checkpoint returns its stored value and `commit` does not run.
    ///
    /// Otherwise `commit` gets the step's [`TransactionalStep`] and must, in one
    /// transaction: check that the lease is current, run the application's closure,
    /// write [`TransactionalStep::checkpoint`] with its value, and commit; then return
    /// the value. When the application's closure fails, `commit` rolls back and returns
    /// that error; a terminal (no-retry) error is then stored by the engine in a write
    /// of its own, as `step` stores it, and a retryable one is returned as is. A lease
    /// found lost is returned as [`crate::Error::LeaseLost`] (through
    /// [`TaskError::from_engine`]) after rolling back.
    ///
    /// # Errors
    /// `commit`'s error; non-determinism; a stored value that does not fit `T`; a lost
    /// lease or storage error while storing a terminal error.
    pub fn transactional_step<T, F, Fut>(
        &self,
        name: &str,
        commit: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
        F: FnOnce(TransactionalStep) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        let key = self.next_key();
        let span = crate::trace::leveled_span!(
            "durable_jobs.step",
            name,
            key = key.as_str(),
            transactional = true,
            replayed = Empty
        );
        let recorder = span.clone();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let recorded = ctx.recorded(&key, &name, None).await?;
            recorder.record("replayed", recorded.is_some());
            if let Some(outcome) = recorded {
                return decode(&name, key.as_str(), outcome);
            }
            let step = TransactionalStep {
                lease: ctx.lease().clone(),
                key: key.clone(),
                name: name.clone(),
            };
            let outcome = match commit(step.clone()).await {
                Ok(value) => {
                    // Written by the backend's commit: remember it for this attempt.
                    let checkpoint = step.checkpoint(value);
                    let outcome = checkpoint.outcome.clone();
                    ctx.remember(checkpoint)
                        .await
                        .map_err(TaskError::from_engine)?;
                    outcome
                }
                Err(e) if e.kind() == TaskErrorKind::NoRetry => {
                    let outcome = CheckpointOutcome::Err(e.message().to_string());
                    ctx.save_checkpoint(Checkpoint {
                        outcome: outcome.clone(),
                        ..step.checkpoint(Value::Null)
                    })
                    .await
                    .map_err(TaskError::from_engine)?;
                    outcome
                }
                Err(e) => return Err(e),
            };
            decode(&name, key.as_str(), outcome)
        }
        .instrument(span)
    }
}
