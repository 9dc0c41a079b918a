//! Child jobs: fan out, wait (holding no slot), fan in with a strategy.

use super::context::JobContext;
use super::key::CheckpointKey;
use crate::job::{Checkpoint, CheckpointOutcome, Job, JobId, JobStatus};
use crate::options::JobOptions;
use crate::storage::JobFilter;
use crate::storage::SpawnChildrenParams;
use crate::storage::Storage;
use crate::task::TaskError;
use crate::trace;
use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::future::Future;
use tracing::Instrument;

/// When a fan-out's outcome is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// The first failed (or cancelled) child fails the fan-out and cancels the rest;
    /// otherwise it succeeds when every child completed.
    FailFast,
    /// Waits for every child; each result says how that child ended.
    CollectAll,
    /// Succeeds once this many children completed (the rest are cancelled); fails as soon
    /// as that can no longer happen.
    Threshold(usize),
}

/// How one child ended: its typed result, or its error (failed or cancelled).
pub type ChildResult<T> = Result<T, String>;

impl JobContext {
    /// Enqueues one job per item as children of this job and waits for them, holding no
    /// worker slot while they run: the job suspends to `waiting` and resumes when the
    /// outcome is decided by `strategy`. Results come back typed, in the items' order.
    /// The children and the checkpoint that records them commit in one transaction,
    /// fenced by this job's lease, so a retry never enqueues them twice.
    ///
    /// # Errors
    /// For [`FanOut::FailFast`] the first failure; for [`FanOut::Threshold`] when too few
    /// children can complete; the suspension while waiting; invalid arguments or options.
    pub fn fan_out<T, A>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        options: JobOptions,
        strategy: FanOut,
    ) -> impl Future<Output = Result<Vec<ChildResult<T>>, TaskError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
        A: Serialize,
    {
        let spawn_key = self.next_key();
        let join_key = self.next_key();
        let ctx = self.clone();
        let task = task.to_string();
        let payloads: Result<Vec<Value>, TaskError> = items
            .into_iter()
            .map(|a| {
                serde_json::to_value(a).map_err(|e| {
                    TaskError::no_retry(format!(
                        "child arguments for `{task}` do not serialize: {e}"
                    ))
                })
            })
            .collect();
        async move {
            let payloads = payloads?;
            let ids = ctx.spawn(&spawn_key, &task, payloads, &options).await?;
            let outcome = ctx.join_children(&join_key, &task, &ids, strategy).await?;
            outcome
                .into_iter()
                .map(|r| match r {
                    Ok(v) => serde_json::from_value(v).map(Ok).map_err(|e| {
                        TaskError::no_retry(format!(
                            "a result of child task `{task}` does not fit: {e}"
                        ))
                    }),
                    Err(e) => Ok(Err(e)),
                })
                .collect()
        }
    }

    /// Enqueues one child job and waits for its result (holding no slot meanwhile).
    ///
    /// # Errors
    /// The child's failure as a non-retryable error; otherwise as [`JobContext::fan_out`].
    pub fn join<T, A>(
        &self,
        task: &str,
        args: &A,
        options: JobOptions,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
        A: Serialize + ?Sized,
    {
        let args = serde_json::to_value(args);
        let fut =
            self.fan_out::<T, Value>(task, args.as_ref().ok().cloned(), options, FanOut::FailFast);
        async move {
            args.map_err(|e| {
                TaskError::no_retry(format!("child arguments do not serialize: {e}"))
            })?;
            let mut out = fut.await?;
            match out.pop() {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(TaskError::no_retry(e)),
                None => Err(TaskError::no_retry("the child job vanished")),
            }
        }
    }

    /// The children spawned at `key`: from the checkpoint on replay, else spawned now.
    async fn spawn(
        &self,
        key: &CheckpointKey,
        task: &str,
        payloads: Vec<Value>,
        options: &JobOptions,
    ) -> Result<Vec<JobId>, TaskError> {
        let engine = TaskError::from_engine;
        let name = format!("spawn:{task}");
        if let Some(outcome) = self.recorded(key, &name, None).await? {
            return match outcome {
                CheckpointOutcome::Ok(v) => serde_json::from_value(v).map_err(|e| {
                    TaskError::no_retry(format!("stored child ids at `{key}` are unreadable: {e}"))
                }),
                CheckpointOutcome::Err(e) => Err(TaskError::no_retry(e)),
            };
        }
        let handler = self.queue().handler(task);
        let mut jobs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            if let Some(h) = &handler {
                h.check(&payload).map_err(|message| {
                    engine(Error::InvalidPayload {
                        task: task.into(),
                        message,
                    })
                })?;
            }
            jobs.push(options.build(task, payload).map_err(engine)?);
        }
        // The children join this job's trace: the attempt's (task-local) context, or the
        // one stored with this job when the spawn runs outside the attempt's task.
        let queue = jobs
            .first()
            .map_or(crate::job::DEFAULT_QUEUE, |j| j.queue.as_str());
        let (span, context) =
            trace::enqueue_span(task, queue, jobs.len(), trace::stored(self.job()));
        let traceparent = context.to_traceparent();
        for j in &mut jobs {
            j.trace_context = Some(traceparent.clone());
        }
        let ids = self
            .queue()
            .storage()
            .spawn_children(SpawnChildrenParams {
                lease: self.lease(),
                key: key.as_str(),
                name: &name,
                jobs,
            })
            .instrument(span)
            .await
            .map_err(engine)?;
        self.remember(Checkpoint {
            key: key.to_string(),
            name,
            outcome: CheckpointOutcome::Ok(json!(ids)),
            created_at: None,
            args_hash: None,
        })
        .await
        .map_err(engine)?;
        self.queue().wake();
        Ok(ids)
    }

    /// The decided outcome at `key`, or the suspension while undecided.
    async fn join_children(
        &self,
        key: &CheckpointKey,
        task: &str,
        ids: &[JobId],
        strategy: FanOut,
    ) -> Result<Vec<ChildResult<Value>>, TaskError> {
        let engine = TaskError::from_engine;
        let name = format!("join:{task}");
        if let Some(outcome) = self.recorded(key, &name, None).await? {
            return match outcome {
                CheckpointOutcome::Ok(v) => serde_json::from_value::<Vec<StoredChild>>(v)
                    .map(|list| list.into_iter().map(StoredChild::into_result).collect())
                    .map_err(|e| {
                        TaskError::no_retry(format!("stored fan-in at `{key}` is unreadable: {e}"))
                    }),
                CheckpointOutcome::Err(e) => Err(TaskError::no_retry(e)),
            };
        }
        let children = self.children(ids).await?;
        let Some(decision) = decide(&children, strategy) else {
            return Err(self.suspend_until(None));
        };
        // Children no longer needed are cancelled; cancelling is idempotent.
        if decision.cancel_rest {
            for c in children.iter().filter(|c| !c.status.is_finished()) {
                self.queue().storage().cancel(c.id).await.map_err(engine)?;
            }
        }
        let outcome = match decision.result {
            Ok(()) => CheckpointOutcome::Ok(json!(children
                .iter()
                .map(StoredChild::from_job)
                .collect::<Vec<_>>())),
            Err(msg) => CheckpointOutcome::Err(msg),
        };
        self.save_checkpoint(Checkpoint {
            key: key.to_string(),
            name,
            outcome: outcome.clone(),
            created_at: None,
            args_hash: None,
        })
        .await
        .map_err(engine)?;
        match outcome {
            CheckpointOutcome::Ok(_) => Ok(children
                .iter()
                .map(|c| StoredChild::from_job(c).into_result())
                .collect()),
            CheckpointOutcome::Err(e) => Err(TaskError::no_retry(e)),
        }
    }

    /// The children with these ids, in this order.
    async fn children(&self, ids: &[JobId]) -> Result<Vec<Job>, TaskError> {
        let storage = self.queue().storage();
        let mut by_id = std::collections::HashMap::with_capacity(ids.len());
        let mut after = None;
        loop {
            let page = storage
                .list_jobs(JobFilter {
                    parent_id: Some(self.job_id()),
                    after_id: after,
                    limit: Some(1000),
                    ..JobFilter::default()
                })
                .await
                .map_err(TaskError::from_engine)?;
            let done = page.len() < 1000;
            after = page.last().map(|j| j.id);
            by_id.extend(page.into_iter().map(|j| (j.id, j)));
            if done {
                break;
            }
        }
        ids.iter()
            .map(|id| {
                by_id.remove(id).ok_or_else(|| {
                    TaskError::no_retry(format!("child job {id} is gone (deleted?)"))
                })
            })
            .collect()
    }
}

struct Decision {
    result: Result<(), String>,
    cancel_rest: bool,
}

fn decide(children: &[Job], strategy: FanOut) -> Option<Decision> {
    let completed = children
        .iter()
        .filter(|c| c.status == JobStatus::Completed)
        .count();
    let unfinished = children.iter().filter(|c| !c.status.is_finished()).count();
    let first_failure = children
        .iter()
        .find(|c| matches!(c.status, JobStatus::Failed | JobStatus::Cancelled));
    match strategy {
        FanOut::FailFast => match first_failure {
            Some(c) => Some(Decision {
                result: Err(format!(
                    "child job {} ({}) {}: {}",
                    c.id,
                    c.task,
                    c.status,
                    c.last_error.as_deref().unwrap_or("no error recorded")
                )),
                cancel_rest: true,
            }),
            None if unfinished == 0 => Some(Decision {
                result: Ok(()),
                cancel_rest: false,
            }),
            None => None,
        },
        FanOut::CollectAll => (unfinished == 0).then_some(Decision {
            result: Ok(()),
            cancel_rest: false,
        }),
        FanOut::Threshold(n) => {
            if completed >= n {
                Some(Decision {
                    result: Ok(()),
                    cancel_rest: true,
                })
            } else if completed + unfinished < n {
                Some(Decision {
                    result: Err(format!(
                        "only {} of {} children can complete, {n} needed",
                        completed + unfinished,
                        children.len()
                    )),
                    cancel_rest: true,
                })
            } else {
                None
            }
        }
    }
}

/// One child's outcome as checkpointed.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredChild {
    Ok(Value),
    Err(String),
}

impl StoredChild {
    fn from_job(j: &Job) -> Self {
        match j.status {
            JobStatus::Completed => StoredChild::Ok(j.result.clone().unwrap_or(Value::Null)),
            JobStatus::Cancelled => StoredChild::Err(format!("child job {} was cancelled", j.id)),
            _ if !j.status.is_finished() => {
                StoredChild::Err(format!("child job {} was cancelled", j.id))
            }
            _ => StoredChild::Err(
                j.last_error
                    .clone()
                    .unwrap_or_else(|| format!("child job {} failed", j.id)),
            ),
        }
    }

    fn into_result(self) -> ChildResult<Value> {
        match self {
            StoredChild::Ok(v) => Ok(v),
            StoredChild::Err(e) => Err(e),
        }
    }
}
