//! The context a handler receives: which job it runs, its lease, cancellation, and the
//! checkpoint scope that durable calls use.

use super::key::CheckpointKey;
use crate::error::Result;
use crate::job::{Checkpoint, Job, JobId, Lease};
use crate::queue::Queue;
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
    /// Loaded on the first durable call, so plain jobs never read checkpoints.
    checkpoints: OnceCell<Mutex<HashMap<String, Checkpoint>>>,
    cancel: watch::Receiver<bool>,
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
    pub(crate) fn new(job: Job, lease: Lease, queue: Queue, cancel: watch::Receiver<bool>) -> Self {
        JobContext {
            shared: Arc::new(Shared {
                job,
                lease,
                queue,
                checkpoints: OnceCell::new(),
                cancel,
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

    /// True once the worker is shutting down: finish quickly or return.
    pub fn is_cancelled(&self) -> bool {
        *self.shared.cancel.borrow()
    }

    /// Resolves when the worker starts shutting down.
    pub async fn cancelled(&self) {
        let mut rx = self.shared.cancel.clone();
        // An error means the worker is gone, which is cancellation too.
        let _ = rx.wait_for(|c| *c).await;
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

    /// Stores a checkpoint, fenced by the lease, and remembers it for this attempt.
    pub(crate) async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let map = self.loaded().await?;
        self.shared
            .queue
            .storage()
            .save_checkpoint(&self.shared.lease, checkpoint.clone())
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
                    .checkpoints(self.shared.job.id)
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
