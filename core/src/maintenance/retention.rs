//! Automatic retention: finished jobs are deleted once they are older than their final
//! status's retention, in bounded batches, oldest first, by one worker at a time.
//!
//! Every worker runs the loop; the storage serializes the batches across processes (a
//! transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite, the state
//! lock in memory), and a worker that finds the lock taken skips its turn. A batch
//! deletes whole workflow trees (see [`crate::Storage::purge_retained`]), so a child
//! never goes before its root, and a job's checkpoints, signals and attempt history go
//! with it.

use crate::event::Event;
use crate::storage::{RetentionBatch, RetentionPurged, Storage};
use crate::worker::shared::Shared;
use crate::worker::timer::Ticker;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// How long completed jobs are kept by default: 1 day. Long enough to look a result up
/// the next morning or debug yesterday's run; short enough that a queue running millions
/// of jobs a day keeps its table and indexes small.
pub const DEFAULT_KEEP_COMPLETED: Duration = Duration::from_secs(86_400);
/// How long failed jobs are kept by default: 7 days, so a failure over a weekend is
/// still there, with its error and attempt history, to inspect and retry by hand.
pub const DEFAULT_KEEP_FAILED: Duration = Duration::from_secs(7 * 86_400);
/// How long cancelled jobs are kept by default: 1 day, as completed ones (someone chose
/// to cancel them; there is rarely anything to investigate).
pub const DEFAULT_KEEP_CANCELLED: Duration = Duration::from_secs(86_400);
/// How often a worker runs the retention purge. Defaults to 1 minute: each pass deletes
/// everything that became due since the previous one, in batches.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// The most workflow trees (root jobs with their descendants) one retention batch
/// deletes. Defaults to 1000: each batch is one short transaction, so the purge never
/// holds locks or bloats WAL the way one unbounded DELETE would, and claims and
/// completions interleave with it.
pub const DEFAULT_RETENTION_BATCH: usize = 1000;

/// How long finished jobs are kept, per final status, before the workers' retention
/// purge deletes them (measured from when they finished). `None` keeps that status
/// forever. The default keeps completed and cancelled jobs for
/// [`DEFAULT_KEEP_COMPLETED`] and [`DEFAULT_KEEP_CANCELLED`] (1 day) and failed ones for
/// [`DEFAULT_KEEP_FAILED`] (7 days).
///
/// ```
/// use durable_jobs::{RetentionPolicy, WorkerOptions};
/// use std::time::Duration;
/// let opts = WorkerOptions::new().retention(
///     RetentionPolicy::default().failed(Some(Duration::from_secs(30 * 86_400))),
/// );
/// let forever = WorkerOptions::new().retention(RetentionPolicy::keep_forever());
/// # let _ = (opts, forever);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    completed: Option<Duration>,
    failed: Option<Duration>,
    cancelled: Option<Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            completed: Some(DEFAULT_KEEP_COMPLETED),
            failed: Some(DEFAULT_KEEP_FAILED),
            cancelled: Some(DEFAULT_KEEP_CANCELLED),
        }
    }
}

impl RetentionPolicy {
    /// Keeps every finished job forever: the purge deletes nothing.
    pub fn keep_forever() -> Self {
        RetentionPolicy {
            completed: None,
            failed: None,
            cancelled: None,
        }
    }

    /// How long completed jobs are kept; `None` keeps them forever.
    pub fn completed(mut self, keep: Option<Duration>) -> Self {
        self.completed = keep;
        self
    }

    /// How long failed jobs are kept; `None` keeps them forever.
    pub fn failed(mut self, keep: Option<Duration>) -> Self {
        self.failed = keep;
        self
    }

    /// How long cancelled jobs are kept; `None` keeps them forever.
    pub fn cancelled(mut self, keep: Option<Duration>) -> Self {
        self.cancelled = keep;
        self
    }

    /// True when no status is ever deleted.
    pub fn keeps_everything(&self) -> bool {
        self.completed.is_none() && self.failed.is_none() && self.cancelled.is_none()
    }

    /// The batch that deletes, as of `now`, jobs older than this policy keeps. A
    /// retention too long to subtract from `now` keeps that status.
    pub fn batch(&self, now: DateTime<Utc>, limit: usize) -> RetentionBatch {
        let cut = |keep: Option<Duration>| {
            keep.and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| now.checked_sub_signed(d))
        };
        RetentionBatch {
            completed_before: cut(self.completed),
            failed_before: cut(self.failed),
            cancelled_before: cut(self.cancelled),
            limit,
        }
    }
}

/// Runs a retention pass every retention interval until the worker stops.
pub(crate) async fn run_retention(shared: Arc<Shared>) {
    let mut stop = shared.stopping.subscribe();
    // On the worker's clock, like the other maintenance loops, so a test kit's virtual
    // time fires it too.
    let mut every = Ticker::new(
        &shared.opts.clock,
        shared.started,
        shared.opts.retention_interval,
    );
    loop {
        pass(&shared).await;
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass as of the storage clock's now: batches until one deletes fewer trees than
/// the batch size, another process holds the lock, or the worker stops. Counts what it
/// deleted and emits [`Event::JobsPurged`] per batch that deleted anything.
pub(crate) async fn pass(shared: &Shared) {
    let policy = shared.opts.retention;
    if policy.keeps_everything() {
        return;
    }
    let storage = shared.queue.storage();
    let now = match storage.now().await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "retention could not read the clock; will retry");
            return;
        }
    };
    let batch = policy.batch(now, shared.opts.retention_batch);
    loop {
        match storage.purge_retained(batch).await {
            Ok(purged) => {
                report(shared, &purged);
                if purged.busy || purged.roots < batch.limit as u64 || shared.is_stopping() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention batch failed; will retry");
                return;
            }
        }
        // Let claims and completions of this process run between batches.
        tokio::task::yield_now().await;
    }
}

fn report(shared: &Shared, purged: &RetentionPurged) {
    if purged.busy {
        tracing::debug!("another worker is running the retention purge");
        return;
    }
    if purged.jobs() == 0 {
        return;
    }
    crate::metric::jobs_purged(purged);
    tracing::debug!(
        roots = purged.roots,
        completed = purged.completed,
        failed = purged.failed,
        cancelled = purged.cancelled,
        "retention purged finished jobs"
    );
    shared.queue.emit(Event::JobsPurged {
        completed: purged.completed,
        failed: purged.failed,
        cancelled: purged.cancelled,
    });
}
