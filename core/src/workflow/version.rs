//! Versioning: change a workflow's code while old runs are still in flight.

use super::context::JobContext;
use super::key::CheckpointKey;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::task::TaskError;
use std::future::Future;

impl JobContext {
    /// The version of the change `change_id` this run follows, between `min` and `max`.
    ///
    /// A run that reaches this point for the first time records `max` if it is new, or
    /// `min` if it is an old run replaying checkpoints written before the check existed
    /// (detected by a checkpoint already stored at the next position). Later replays
    /// return the recorded version, so each run keeps the branch it started on:
    ///
    /// ```ignore
    /// if ctx.version("add-fraud-check", 1, 2).await? >= 2 {
    ///     ctx.call::<(), _>("fraud_check", &order).await?;
    /// }
    /// ```
    ///
    /// The check is keyed by `change_id`, not by position, so adding it does not shift the
    /// positions of the calls after it.
    ///
    /// # Errors
    /// A recorded version outside `min..=max` (the code dropped support for a version
    /// still running) is a non-retryable error.
    pub fn version(
        &self,
        change_id: &str,
        min: i32,
        max: i32,
    ) -> impl Future<Output = Result<i32, TaskError>> + Send + 'static {
        let key = CheckpointKey::from_stored(match self.scope().as_str() {
            "" => format!("version:{change_id}"),
            scope => format!("{scope}/version:{change_id}"),
        });
        let next = self.peek_next_key();
        let ctx = self.clone();
        let change_id = change_id.to_string();
        async move {
            let engine = TaskError::from_engine;
            if let Some(cp) = ctx.checkpoint(&key).await.map_err(engine)? {
                let v = match cp.outcome {
                    CheckpointOutcome::Ok(v) => v.as_i64().and_then(|v| i32::try_from(v).ok()),
                    CheckpointOutcome::Err(_) => None,
                };
                return match v {
                    Some(v) if (min..=max).contains(&v) => Ok(v),
                    other => Err(TaskError::no_retry(format!(
                        "workflow change `{change_id}` recorded version {other:?}, outside the supported {min}..={max}"
                    ))),
                };
            }
            let old_run = ctx.checkpoint(&next).await.map_err(engine)?.is_some();
            let v = if old_run { min } else { max };
            ctx.save_checkpoint(Checkpoint {
                key: key.to_string(),
                name: format!("version:{change_id}"),
                outcome: CheckpointOutcome::Ok(serde_json::json!(v)),
                created_at: None,
                args_hash: None,
            })
            .await
            .map_err(engine)?;
            Ok(v)
        }
    }
}
