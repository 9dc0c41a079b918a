//! Signals: durable messages from outside that a workflow waits for.

use super::context::JobContext;
use super::key::CheckpointKey;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::storage::Storage;
use crate::storage::TakeSignalsParams;
use crate::task::TaskError;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

fn signal_name(name: &str) -> String {
    format!("signal:{name}")
}

fn deadline_name(name: &str) -> String {
    format!("signal-deadline:{name}")
}

impl JobContext {
    /// Waits for the next signal named `name` sent with [`crate::Queue::signal`]. While
    /// none is there the job suspends to `waiting`, holding no slot, and a signal wakes it
    /// at once. Signals are consumed exactly once, oldest first, and the consumption and
    /// its checkpoint commit together, so a replay returns the same payload.
    ///
    /// # Errors
    /// The suspension while waiting; a payload that does not fit `T`; storage errors.
    pub fn wait_for_signal<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static {
        let key = self.next_key();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            match ctx.take_one(&key, &name).await? {
                Some(v) => decode(&name, v),
                None => Err(ctx.suspend_until(None)),
            }
        }
    }

    /// Like [`JobContext::wait_for_signal`], but gives up after `timeout` and returns
    /// `None`. The deadline is fixed on the first run (a checkpoint), so retries and
    /// restarts do not extend it.
    ///
    /// # Errors
    /// As [`JobContext::wait_for_signal`].
    pub fn wait_for_signal_timeout<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<T>, TaskError>> + Send + 'static {
        let key = self.next_key();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let engine = TaskError::from_engine;
            let deadline = ctx.deadline(&key, &name, timeout).await?;
            if let Some(v) = ctx.take_one(&key, &name).await? {
                return decode(&name, v).map(Some);
            }
            if ctx.now().await.map_err(engine)? < deadline {
                return Err(ctx.suspend_until(Some(deadline)));
            }
            // Timed out: record it, so a signal arriving later cannot change the replay.
            ctx.save_checkpoint(Checkpoint {
                key: key.to_string(),
                name: signal_name(&name),
                outcome: CheckpointOutcome::Ok(Value::Array(Vec::new())),
                created_at: None,
                args_hash: None,
            })
            .await
            .map_err(engine)?;
            Ok(None)
        }
    }

    /// The next signal named `name` without consuming or checkpointing it: a live look,
    /// so a replay may see something else.
    ///
    /// # Errors
    /// A payload that does not fit `T`; storage errors.
    pub async fn peek_signal<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, TaskError> {
        let v = self
            .queue()
            .storage()
            .peek_signal(self.job_id(), name)
            .await
            .map_err(TaskError::from_engine)?;
        v.map(|v| decode(name, v)).transpose()
    }

    /// Consumes every signal named `name` waiting now, without suspending (empty when
    /// none). Checkpointed: a replay returns the same list.
    ///
    /// # Errors
    /// A payload that does not fit `T`; storage errors.
    pub fn drain_signals<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<T>, TaskError>> + Send + 'static {
        let key = self.next_key();
        let ctx = self.clone();
        let name = name.to_string();
        async move {
            let engine = TaskError::from_engine;
            let values = match ctx.stored(&key, &name).await? {
                Some(values) => values,
                None => {
                    let taken = ctx
                        .queue()
                        .storage()
                        .take_signals(TakeSignalsParams {
                            lease: ctx.lease(),
                            name: &name,
                            limit: usize::MAX >> 1,
                            key: key.as_str(),
                        })
                        .await
                        .map_err(engine)?;
                    // Storage stores the checkpoint only when it took something; an
                    // empty drain is recorded here so the replay stays empty too.
                    let cp = Checkpoint {
                        key: key.to_string(),
                        name: signal_name(&name),
                        outcome: CheckpointOutcome::Ok(Value::Array(taken.clone())),
                        created_at: None,
                        args_hash: None,
                    };
                    if taken.is_empty() {
                        ctx.save_checkpoint(cp).await.map_err(engine)?;
                    } else {
                        ctx.remember(cp).await.map_err(engine)?;
                    }
                    taken
                }
            };
            values.into_iter().map(|v| decode(&name, v)).collect()
        }
    }

    /// The stored consumption at `key`, if any.
    async fn stored(
        &self,
        key: &CheckpointKey,
        name: &str,
    ) -> Result<Option<Vec<Value>>, TaskError> {
        let Some(outcome) = self.recorded(key, &signal_name(name), None).await? else {
            return Ok(None);
        };
        match outcome {
            CheckpointOutcome::Ok(Value::Array(values)) => Ok(Some(values)),
            other => Err(TaskError::no_retry(format!(
                "checkpoint `{key}` for signal `{name}` holds {other:?}, not a list of payloads"
            ))),
        }
    }

    /// The signal consumed at `key`: from the checkpoint on replay, else taken now.
    async fn take_one(&self, key: &CheckpointKey, name: &str) -> Result<Option<Value>, TaskError> {
        if let Some(values) = self.stored(key, name).await? {
            // An empty list is a recorded timeout.
            return Ok(values.into_iter().next());
        }
        let taken = self
            .queue()
            .storage()
            .take_signals(TakeSignalsParams {
                lease: self.lease(),
                name,
                limit: 1,
                key: key.as_str(),
            })
            .await
            .map_err(TaskError::from_engine)?;
        if !taken.is_empty() {
            self.remember(Checkpoint {
                key: key.to_string(),
                name: signal_name(name),
                outcome: CheckpointOutcome::Ok(Value::Array(taken.clone())),
                created_at: None,
                args_hash: None,
            })
            .await
            .map_err(TaskError::from_engine)?;
        }
        Ok(taken.into_iter().next())
    }

    /// The wait's deadline, fixed by a checkpoint beside the wait's own on the first run.
    async fn deadline(
        &self,
        key: &CheckpointKey,
        name: &str,
        timeout: Duration,
    ) -> Result<DateTime<Utc>, TaskError> {
        let engine = TaskError::from_engine;
        let dkey = format!("{key}/deadline");
        let dkey_ck = CheckpointKey::from_stored(dkey.clone());
        if let Some(cp) = self.checkpoint(&dkey_ck).await.map_err(engine)? {
            if let CheckpointOutcome::Ok(v) = cp.outcome {
                return serde_json::from_value(v).map_err(|e| {
                    TaskError::no_retry(format!("stored deadline at `{dkey}` is unreadable: {e}"))
                });
            }
        }
        let at = self.now().await.map_err(engine)?
            + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        self.save_checkpoint(Checkpoint {
            key: dkey,
            name: deadline_name(name),
            outcome: CheckpointOutcome::Ok(serde_json::json!(at)),
            created_at: None,
            args_hash: None,
        })
        .await
        .map_err(engine)?;
        Ok(at)
    }
}

fn decode<T: DeserializeOwned>(name: &str, v: Value) -> Result<T, TaskError> {
    serde_json::from_value(v).map_err(|e| {
        TaskError::no_retry(format!(
            "signal `{name}` carries a payload that does not fit: {e}"
        ))
    })
}
