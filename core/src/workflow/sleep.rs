//! Durable sleep: the wake time is a checkpoint, and the job waits without a slot.

use super::context::JobContext;
use crate::job::{Checkpoint, CheckpointOutcome};
use crate::task::TaskError;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::time::Duration;

const SLEEP: &str = "sleep";

enum Wake {
    After(Duration),
    At(DateTime<Utc>),
}

impl JobContext {
    /// Sleeps durably for `duration`. The first run records the wake time (storage clock)
    /// as a checkpoint; the job then moves to `waiting`, frees its worker slot, and resumes
    /// at the wake time on any worker, even after every worker restarted. Propagate the
    /// returned error with `?`: it is the suspension, not a failure.
    ///
    /// # Errors
    /// The suspension ([`crate::TaskErrorKind::Suspend`]) until the time has come; storage
    /// errors; non-determinism.
    pub fn sleep(
        &self,
        duration: Duration,
    ) -> impl Future<Output = Result<(), TaskError>> + Send + 'static {
        self.sleep_inner(Wake::After(duration))
    }

    /// Sleeps durably until `at`. See [`JobContext::sleep`].
    ///
    /// # Errors
    /// As [`JobContext::sleep`].
    pub fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), TaskError>> + Send + 'static {
        self.sleep_inner(Wake::At(at))
    }

    fn sleep_inner(
        &self,
        wake: Wake,
    ) -> impl Future<Output = Result<(), TaskError>> + Send + 'static {
        let key = self.next_key();
        let ctx = self.clone();
        async move {
            let engine = TaskError::from_engine;
            let wake_at: DateTime<Utc> = match ctx.recorded(&key, SLEEP, None).await? {
                Some(CheckpointOutcome::Ok(v)) => serde_json::from_value(v).map_err(|e| {
                    TaskError::no_retry(format!("stored wake time at `{key}` is unreadable: {e}"))
                })?,
                Some(CheckpointOutcome::Err(e)) => return Err(TaskError::no_retry(e)),
                None => {
                    let at = match wake {
                        Wake::At(at) => at,
                        Wake::After(d) => {
                            ctx.now().await.map_err(engine)?
                                + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
                        }
                    };
                    ctx.save_checkpoint(Checkpoint {
                        key: key.to_string(),
                        name: SLEEP.into(),
                        outcome: CheckpointOutcome::Ok(serde_json::json!(at)),
                        created_at: None,
                        args_hash: None,
                    })
                    .await
                    .map_err(engine)?;
                    at
                }
            };
            if ctx.now().await.map_err(engine)? >= wake_at {
                Ok(())
            } else {
                Err(ctx.suspend_until(Some(wake_at)))
            }
        }
    }
}
