//! The context a handler receives: which job it runs, its lease, cancellation, and the
//! checkpoint scope that durable calls use.

use super::commit::CheckpointCommitter;
use super::key::CheckpointKey;
use crate::error::Result;
use crate::job::{Checkpoint, Job, JobId, Lease};
use crate::queue::Queue;
use crate::storage::{ClaimedJob, Storage};
use crate::worker::shared::LeaseSignal;
use crate::worker::threads::{AttemptThreads, ThreadToken};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, OnceCell};

/// What a handler knows about the attempt it runs. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    shared: Arc<Shared>,
    scope: CheckpointKey,
    /// The call counter of a nested scope; `None` in the root scope, whose counter
    /// lives in [`Shared::root_calls`] so a plain job's context is one allocation.
    next_call: Option<Arc<AtomicU32>>,
}

struct Shared {
    /// The job as claimed, shared with the claim (see [`crate::ClaimedJob::job`]).
    job: Arc<Job>,
    lease: Lease,
    queue: Queue,
    /// The worker run's checkpoint writer, shared by every job it runs.
    committer: CheckpointCommitter,
    /// Loaded on the first durable call, so plain jobs never read checkpoints.
    checkpoints: OnceCell<Mutex<HashMap<String, Checkpoint>>>,
    /// True once the worker shuts down.
    cancel: watch::Receiver<bool>,
    /// True once this job's lease is lost (cancelled or reclaimed).
    lost: LeaseSignal,
    /// Set when a workflow primitive asked to suspend, with its wake time.
    suspend: Mutex<Option<Option<DateTime<Utc>>>>,
    /// The blocking threads this attempt's handler started.
    threads: AttemptThreads,
    /// The root scope's call counter.
    root_calls: AtomicU32,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.shared.job.id)
            .field("attempt", &self.shared.lease.attempt)
            .field("scope", &self.scope)
            .finish()
    }
}

impl JobContext {
    /// The context of the attempt `claimed` holds. A job the claim knows holds no
    /// checkpoints starts with an empty list instead of reading it at its first
    /// durable call.
    pub(crate) fn new(
        claimed: ClaimedJob,
        queue: Queue,
        committer: CheckpointCommitter,
        cancel: watch::Receiver<bool>,
        lost: LeaseSignal,
        threads: AttemptThreads,
    ) -> Self {
        let ClaimedJob {
            job,
            lease,
            no_checkpoints,
        } = claimed;
        let checkpoints = if no_checkpoints {
            OnceCell::new_with(Some(Mutex::new(HashMap::new())))
        } else {
            OnceCell::new()
        };
        JobContext {
            shared: Arc::new(Shared {
                job,
                lease,
                queue,
                committer,
                checkpoints,
                cancel,
                lost,
                suspend: Mutex::new(None),
                threads,
                root_calls: AtomicU32::new(0),
            }),
            scope: CheckpointKey::root(),
            next_call: None,
        }
    }

    /// Counts in a blocking thread this attempt starts; the worker holds the lease until
    /// the token is dropped.
    pub(crate) fn blocking_thread(&self) -> ThreadToken {
        self.shared.threads.start()
    }

    /// The running job's id.
    pub fn job_id(&self) -> JobId {
        self.shared.job.id
    }

    /// The attempt number (1 for the first attempt).
    pub fn attempt(&self) -> i32 {
        self.shared.lease.attempt
    }

    /// The job as it was claimed.
    pub fn job(&self) -> &Job {
        &self.shared.job
    }

    /// The lease that fences this attempt's writes.
    pub fn lease(&self) -> &Lease {
        &self.shared.lease
    }

    /// The queue the job runs on, to enqueue further jobs.
    pub fn queue(&self) -> &Queue {
        &self.shared.queue
    }

    /// This context's checkpoint scope (the root for the job's own handler).
    pub fn scope(&self) -> &CheckpointKey {
        &self.scope
    }

    /// True once the worker is shutting down, or the job was cancelled or reclaimed
    /// (its lease is lost): finish quickly or return.
    pub fn is_cancelled(&self) -> bool {
        *self.shared.cancel.borrow() || self.shared.lost.is_lost()
    }

    /// Resolves when the worker starts shutting down or the job's lease is lost (it was
    /// cancelled or reclaimed). After a lost lease the handler has the worker's shutdown
    /// grace period to return; then it is dropped, and nothing it returns is written.
    pub async fn cancelled(&self) {
        let mut stop = self.shared.cancel.clone();
        // An error means the worker is gone, which is cancellation too.
        tokio::select! {
            _ = stop.wait_for(|c| *c) => {}
            () = self.shared.lost.lost() => {}
        }
    }

    /// Reports the job's progress (any serializable value: a percentage, a count, an
    /// object): stored on the job, replacing the last report, returned by
    /// [`Queue::get_job`] and [`Queue::job_details`], and sent as
    /// [`crate::Event::Progress`]. Fenced by the lease, like every write of the attempt.
    /// Not checkpointed: a retried attempt reports again from where it is.
    ///
    /// # Errors
    /// As the other primitives a handler propagates with `?`: a lost lease (the job was
    /// reclaimed or cancelled) stops the attempt, a value that does not serialize fails
    /// the job, storage trouble retries it.
    pub async fn progress<P: serde::Serialize + ?Sized>(
        &self,
        progress: &P,
    ) -> std::result::Result<(), crate::TaskError> {
        self.write_progress(progress)
            .await
            .map_err(crate::TaskError::from_engine)
    }

    async fn write_progress<P: serde::Serialize + ?Sized>(&self, progress: &P) -> Result<()> {
        let value = serde_json::to_value(progress)?;
        let queue = &self.shared.queue;
        let event = queue.observed().then(|| value.clone());
        queue
            .storage()
            .set_progress(&self.shared.lease, value)
            .await?;
        if let Some(progress) = event {
            queue.emit(crate::Event::Progress {
                job_id: self.job_id(),
                task: self.shared.job.task.clone(),
                attempt: self.attempt(),
                progress,
            });
        }
        Ok(())
    }

    /// The storage clock's now.
    pub(crate) async fn now(&self) -> Result<DateTime<Utc>> {
        self.shared.queue.storage().now().await
    }

    /// Asks the worker to suspend the job when the handler returns, and gives the error
    /// that makes it return.
    pub(crate) fn suspend_until(&self, wake_at: Option<DateTime<Utc>>) -> crate::TaskError {
        let mut s = self
            .shared
            .suspend
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The earliest wake wins when several primitives wait at once.
        let merged = match (*s, wake_at) {
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            (Some(Some(a)), None) => Some(a),
            (_, w) => w,
        };
        *s = Some(merged);
        crate::TaskError::suspend(merged)
    }

    /// The suspension a primitive asked for, if any.
    pub(crate) fn suspend_request(&self) -> Option<Option<DateTime<Utc>>> {
        *self
            .shared
            .suspend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The key the next call in this scope will take, without taking it.
    pub(crate) fn peek_next_key(&self) -> CheckpointKey {
        self.scope.child(self.calls().load(Ordering::SeqCst))
    }

    /// This scope's call counter.
    fn calls(&self) -> &AtomicU32 {
        self.next_call.as_deref().unwrap_or(&self.shared.root_calls)
    }

    /// Remembers a checkpoint that storage wrote as part of another operation.
    pub(crate) async fn remember(&self, checkpoint: Checkpoint) -> Result<()> {
        let map = self.loaded().await?;
        lock(map).insert(checkpoint.key.clone(), checkpoint);
        Ok(())
    }

    /// Reserves the next position in this scope. Positions are taken when a call is
    /// made, not when it is first polled, so calls joined concurrently keep their order.
    pub(crate) fn next_key(&self) -> CheckpointKey {
        self.scope
            .child(self.calls().fetch_add(1, Ordering::SeqCst))
    }

    /// A context for a called handler: the same job and lease, its own scope.
    pub(crate) fn nested(&self, scope: CheckpointKey) -> JobContext {
        JobContext {
            shared: self.shared.clone(),
            scope,
            next_call: Some(Arc::new(AtomicU32::new(0))),
        }
    }

    /// The stored checkpoint at `key`, loading the job's checkpoints on first use.
    pub(crate) async fn checkpoint(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>> {
        let map = self.loaded().await?;
        Ok(lock(map).get(key.as_str()).cloned())
    }

    /// The outcome recorded at `key` on an earlier run, checking that it was recorded by
    /// the same call: a different name means the code changed under a running workflow,
    /// which is a non-determinism error, never a silently wrong result. With
    /// `args_hash`, a checkpoint that recorded another hash is reported as the job's
    /// task's [`crate::Determinism`] says; one that recorded none is not checked.
    pub(crate) async fn recorded(
        &self,
        key: &CheckpointKey,
        name: &str,
        args_hash: Option<&str>,
    ) -> std::result::Result<Option<crate::CheckpointOutcome>, crate::TaskError> {
        let stored = self
            .checkpoint(key)
            .await
            .map_err(crate::TaskError::from_engine)?;
        let Some(cp) = stored else {
            return Ok(None);
        };
        if cp.name != name {
            return Err(crate::TaskError::from_engine(
                crate::Error::NonDeterminism {
                    job_id: self.job_id(),
                    key: key.to_string(),
                    recorded: cp.name,
                    found: name.to_string(),
                },
            ));
        }
        if let (Some(recorded), Some(found)) = (cp.args_hash.as_deref(), args_hash) {
            if recorded != found {
                self.arguments_changed(key, name, recorded, found)?;
            }
        }
        Ok(Some(cp.outcome))
    }

    /// Reports a replayed call whose arguments changed: an error under
    /// [`crate::Determinism::Strict`], a warning under `Warn`; an event in both.
    fn arguments_changed(
        &self,
        key: &CheckpointKey,
        name: &str,
        recorded: &str,
        found: &str,
    ) -> std::result::Result<(), crate::TaskError> {
        let err = crate::Error::ArgumentsChanged {
            job_id: self.job_id(),
            key: key.to_string(),
            name: name.to_string(),
            recorded: recorded.to_string(),
            found: found.to_string(),
        };
        let queue = &self.shared.queue;
        queue.emit(crate::Event::NonDeterminism {
            job_id: self.job_id(),
            key: key.to_string(),
            name: name.to_string(),
            message: err.to_string(),
        });
        match queue.determinism(&self.shared.job.task) {
            crate::Determinism::Strict => Err(crate::TaskError::from_engine(err)),
            crate::Determinism::Warn => {
                tracing::warn!(job_id = self.job_id(), key = %key, name, error = %err, "replaying with changed arguments; returning the stored result");
                Ok(())
            }
        }
    }

    /// Stores a checkpoint, fenced by the lease, and remembers it for this attempt. The
    /// write is group-committed with the other checkpoints in flight on this worker, and
    /// returns once this one is durable.
    pub(crate) async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let map = self.loaded().await?;
        self.shared
            .committer
            .save(&self.shared.lease, checkpoint.clone())
            .await?;
        lock(map).insert(checkpoint.key.clone(), checkpoint);
        Ok(())
    }

    async fn loaded(&self) -> Result<&Mutex<HashMap<String, Checkpoint>>> {
        self.shared
            .checkpoints
            .get_or_try_init(|| async {
                let list = self.shared.committer.load(self.shared.job.id).await?;
                Ok(Mutex::new(
                    list.into_iter().map(|c| (c.key.clone(), c)).collect(),
                ))
            })
            .await
    }
}

fn lock(
    m: &Mutex<HashMap<String, Checkpoint>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Checkpoint>> {
    // Inserts are single operations; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
