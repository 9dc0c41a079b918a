//! The context a handler receives: which job it runs, its lease, cancellation, and the
//! checkpoint scope that durable calls use.

use super::commit::CheckpointCommitter;
use super::key::CheckpointKey;
use crate::error::Result;
use crate::job::{Checkpoint, Job, JobId, Lease};
use crate::queue::Queue;
use crate::storage::Storage;
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
    next_call: Arc<AtomicU32>,
}

struct Shared {
    job: Job,
    lease: Lease,
    queue: Queue,
    /// The worker run's checkpoint writer, shared by every job it runs.
    committer: CheckpointCommitter,
    /// Loaded on the first durable call, so plain jobs never read checkpoints.
    checkpoints: OnceCell<Mutex<HashMap<String, Checkpoint>>>,
    /// True once the worker shuts down.
    cancel: watch::Receiver<bool>,
    /// True once this job's lease is lost (cancelled or reclaimed).
    lost: watch::Receiver<bool>,
    /// Set when a workflow primitive asked to suspend, with its wake time.
    suspend: Mutex<Option<Option<DateTime<Utc>>>>,
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
    pub(crate) fn new(
        job: Job,
        lease: Lease,
        queue: Queue,
        committer: CheckpointCommitter,
        cancel: watch::Receiver<bool>,
        lost: watch::Receiver<bool>,
    ) -> Self {
        JobContext {
            shared: Arc::new(Shared {
                job,
                lease,
                queue,
                committer,
                checkpoints: OnceCell::new(),
                cancel,
                lost,
                suspend: Mutex::new(None),
            }),
            scope: CheckpointKey::root(),
            next_call: Arc::new(AtomicU32::new(0)),
        }
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
        *self.shared.cancel.borrow() || *self.shared.lost.borrow()
    }

    /// Resolves when the worker starts shutting down or the job is cancelled.
    pub async fn cancelled(&self) {
        let mut stop = self.shared.cancel.clone();
        let mut lost = self.shared.lost.clone();
        // An error means the worker is gone, which is cancellation too.
        tokio::select! {
            _ = stop.wait_for(|c| *c) => {}
            _ = lost.wait_for(|c| *c) => {}
        }
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
        self.scope.child(self.next_call.load(Ordering::SeqCst))
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
            .child(self.next_call.fetch_add(1, Ordering::SeqCst))
    }

    /// A context for a called handler: the same job and lease, its own scope.
    pub(crate) fn nested(&self, scope: CheckpointKey) -> JobContext {
        JobContext {
            shared: self.shared.clone(),
            scope,
            next_call: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The stored checkpoint at `key`, loading the job's checkpoints on first use.
    pub(crate) async fn checkpoint(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>> {
        let map = self.loaded().await?;
        Ok(lock(map).get(key.as_str()).cloned())
    }

    /// The outcome recorded at `key` on an earlier run, checking that it was recorded by
    /// the same call: a different name means the code changed under a running workflow,
    /// which is a non-determinism error, never a silently wrong result.
    pub(crate) async fn recorded(
        &self,
        key: &CheckpointKey,
        name: &str,
    ) -> std::result::Result<Option<crate::CheckpointOutcome>, crate::TaskError> {
        let stored = self
            .checkpoint(key)
            .await
            .map_err(crate::TaskError::from_engine)?;
        match stored {
            Some(cp) if cp.name != name => Err(crate::TaskError::from_engine(
                crate::Error::NonDeterminism {
                    job_id: self.job_id(),
                    key: key.to_string(),
                    recorded: cp.name,
                    found: name.to_string(),
                },
            )),
            Some(cp) => Ok(Some(cp.outcome)),
            None => Ok(None),
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
                let list = self
                    .shared
                    .queue
                    .storage()
                    .list_checkpoints(self.shared.job.id)
                    .await?;
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
