//! Operations on a queue's jobs: inspect, retry, cancel, reschedule, finish by hand,
//! purge, pause.

use crate::error::Result;
use crate::job::{Checkpoint, Job, JobId};
use crate::queue::Queue;
use crate::storage::Storage;
use crate::storage::{AttemptRecord, JobFilter, ManualOutcome, QueueCount};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// The most children [`Queue::job_details`] lists; page through more with
/// [`Queue::list_jobs`] and [`JobFilter::parent_id`].
pub const DETAILS_CHILDREN_LIMIT: usize = 100;

/// The longest window [`Queue::set_queue_rate_limit`] accepts (366 days).
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest running cap [`Queue::set_key_limit`] accepts.
pub const MAX_KEY_LIMIT: u32 = 100_000;

/// A job with what a timeline of it needs: its checkpoints (with the time each was
/// written), its attempt history and its children.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDetails {
    /// The job.
    pub job: Job,
    /// Its checkpoints, in key order.
    pub checkpoints: Vec<Checkpoint>,
    /// Its attempts, oldest first (the current one as running).
    pub attempts: Vec<AttemptRecord>,
    /// Its children (spawned by a workflow, or a bundle's members), by id, at most
    /// [`DETAILS_CHILDREN_LIMIT`].
    pub children: Vec<Job>,
}

impl Queue {
    /// A job with its checkpoints, attempt history and children.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn job_details(&self, id: JobId) -> Result<Option<JobDetails>> {
        let Some(job) = self.storage().get_job(id).await? else {
            return Ok(None);
        };
        let checkpoints = self.storage().list_checkpoints(id).await?;
        let attempts = self.storage().list_attempts(id).await?;
        let children = self
            .storage()
            .list_jobs(JobFilter {
                parent_id: Some(id),
                limit: Some(DETAILS_CHILDREN_LIMIT),
                ..JobFilter::default()
            })
            .await?;
        Ok(Some(JobDetails {
            job,
            checkpoints,
            attempts,
            children,
        }))
    }

    /// Deletes a job that is not running, with its checkpoints, signals and history.
    /// Returns false when no such job exists.
    ///
    /// # Errors
    /// [`crate::Error::InvalidState`] for a running job (cancel it first), and storage
    /// errors.
    pub async fn delete_job(&self, id: JobId) -> Result<bool> {
        self.storage().delete_job(id).await
    }

    /// Deletes every job matching `filter` that is not running, in batches of at most
    /// `batch_size` matching jobs (each batch one transaction), and returns how many jobs
    /// were deleted. `filter.limit` is ignored; `filter.after_id` is where it starts.
    ///
    /// A matching job goes with all its descendants (a workflow's children, a bundle's
    /// members), and a job whose parent still exists never matches on its own: a
    /// workflow's child is deleted only with its root, never out from under it. A job
    /// whose tree has a running job is left whole (cancel it first). "Older than" is
    /// [`JobFilter::created_before`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), durable_jobs::Error> {
    /// use durable_jobs::{JobFilter, JobStatus, Queue};
    /// # let queue = Queue::new(std::sync::Arc::new(durable_jobs_memory::MemoryStorage::new()));
    /// let filter = JobFilter {
    ///     statuses: vec![JobStatus::Failed],
    ///     metadata: Some(("tenant".into(), "acme".into())),
    ///     ..JobFilter::default()
    /// };
    /// let deleted = queue.delete_jobs(filter, 500).await?;
    /// # let _ = deleted; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::InvalidOption`] for a zero batch size or a malformed filter, and
    /// storage errors (jobs deleted by earlier batches stay deleted).
    pub async fn delete_jobs(&self, filter: JobFilter, batch_size: usize) -> Result<u64> {
        if batch_size == 0 {
            return Err(crate::Error::InvalidOption {
                option: "batch_size",
                message: "expected at least 1".into(),
            });
        }
        filter.validate()?;
        let mut deleted = 0;
        let mut after_id = filter.after_id;
        loop {
            let batch = self
                .storage()
                .delete_jobs(JobFilter {
                    after_id,
                    limit: Some(batch_size),
                    ..filter.clone()
                })
                .await?;
            deleted += batch.deleted;
            match batch.last_id {
                Some(last) => after_id = Some(last),
                None => return Ok(deleted),
            }
        }
    }

    /// Jobs per queue and final status that finished at or after `since` (for "the last
    /// hour" on a dashboard).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn finished_since(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        self.storage().finished_counts(since).await
    }

    /// Jobs matching `filter` (status, queue, task, tag, metadata, parent, created time), by
    /// ascending id; page with `after_id` and `limit`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.storage().list_jobs(filter).await
    }

    /// Job counts per queue and status.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.storage().counts().await
    }

    /// Requeues failed or cancelled jobs with a fresh attempt count. With
    /// `keep_checkpoints`, a workflow resumes after its finished steps; without, it starts
    /// from scratch. Returns how many were requeued.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        let n = self.storage().retry_jobs(ids, keep_checkpoints).await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Moves a job that has not started (pending, retrying or waiting) to run at `run_at`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn reschedule(&self, id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        let moved = self.storage().reschedule_job(id, run_at).await?;
        self.wake();
        Ok(moved)
    }

    /// Marks unfinished jobs that are not running as completed with `result`.
    ///
    /// # Errors
    /// Serialization and storage errors.
    pub async fn complete_jobs<R: Serialize + ?Sized>(
        &self,
        ids: &[JobId],
        result: &R,
    ) -> Result<u64> {
        let result = serde_json::to_value(result)?;
        self.storage()
            .finish_jobs(ids, ManualOutcome::Complete(result))
            .await
    }

    /// Marks unfinished jobs that are not running as failed for good with `reason`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn fail_jobs(&self, ids: &[JobId], reason: &str) -> Result<u64> {
        self.storage()
            .finish_jobs(ids, ManualOutcome::Fail(reason.to_string()))
            .await
    }

    /// Deletes jobs that finished longer than `retention` ago (by the storage clock), with
    /// their checkpoints. Returns how many.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn purge_finished(&self, retention: Duration) -> Result<u64> {
        let now = self.storage().now().await?;
        let older_than =
            now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self.storage().purge_finished(older_than).await
    }

    /// Stops workers claiming from `queue` until it is resumed. Running jobs go on.
    ///
    /// # Errors
    /// [`crate::Error::InvalidQueueName`] and storage errors.
    pub async fn pause_queue(&self, queue: &str) -> Result<()> {
        crate::options::validate_queue_name(queue)?;
        self.storage().set_queue_paused(queue, true).await
    }

    /// Resumes a paused queue.
    ///
    /// # Errors
    /// [`crate::Error::InvalidQueueName`] and storage errors.
    pub async fn resume_queue(&self, queue: &str) -> Result<()> {
        crate::options::validate_queue_name(queue)?;
        self.storage().set_queue_paused(queue, false).await?;
        self.wake();
        Ok(())
    }

    /// Lets up to `max_running` jobs of serial key `key` run at once across every worker
    /// and process (a concurrency cap per key; serial keys run one at a time unless a
    /// limit says otherwise). Jobs take a key with [`crate::JobOptions::serial_key`].
    ///
    /// # Errors
    /// [`crate::Error::InvalidOption`] for an empty key or a limit outside 1 to
    /// [`MAX_KEY_LIMIT`], and storage errors.
    pub async fn set_key_limit(&self, key: &str, max_running: u32) -> Result<()> {
        if key.is_empty() {
            return Err(crate::Error::InvalidOption {
                option: "key",
                message: "expected a non-empty key".into(),
            });
        }
        if !(1..=MAX_KEY_LIMIT).contains(&max_running) {
            return Err(crate::Error::InvalidOption {
                option: "max_running",
                message: format!("expected 1 to {MAX_KEY_LIMIT}, found {max_running}"),
            });
        }
        self.storage().set_key_limit(key, Some(max_running)).await?;
        self.wake();
        Ok(())
    }

    /// Removes a key's limit: its jobs run one at a time again.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn clear_key_limit(&self, key: &str) -> Result<()> {
        self.storage().set_key_limit(key, None).await
    }

    /// The keys with a limit, by key.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        self.storage().key_limits().await
    }

    /// Lets at most `max_starts` jobs of `queue` start per `period` across every worker
    /// and process (a rate limit, in fixed windows that open at the first start after
    /// the previous one closed).
    ///
    /// # Errors
    /// [`crate::Error::InvalidQueueName`]; [`crate::Error::InvalidOption`] for zero starts
    /// or a period outside 1 ms to 366 days; storage errors.
    pub async fn set_queue_rate_limit(
        &self,
        queue: &str,
        max_starts: u32,
        period: Duration,
    ) -> Result<()> {
        crate::options::validate_queue_name(queue)?;
        if max_starts == 0 {
            return Err(crate::Error::InvalidOption {
                option: "max_starts",
                message: "expected at least 1".into(),
            });
        }
        if period < Duration::from_millis(1) || period > MAX_RATE_PERIOD {
            return Err(crate::Error::InvalidOption {
                option: "period",
                message: format!("expected 1ms to {MAX_RATE_PERIOD:?}, found {period:?}"),
            });
        }
        let limit = crate::storage::RateLimit { max_starts, period };
        self.storage()
            .set_queue_rate_limit(queue, Some(limit))
            .await?;
        self.wake();
        Ok(())
    }

    /// Removes a queue's rate limit.
    ///
    /// # Errors
    /// [`crate::Error::InvalidQueueName`] and storage errors.
    pub async fn clear_queue_rate_limit(&self, queue: &str) -> Result<()> {
        crate::options::validate_queue_name(queue)?;
        self.storage().set_queue_rate_limit(queue, None).await?;
        self.wake();
        Ok(())
    }

    /// The queues with a rate limit, by queue.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn queue_rate_limits(&self) -> Result<Vec<(String, crate::storage::RateLimit)>> {
        self.storage().queue_rate_limits().await
    }

    /// The paused queues.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        self.storage().paused_queues().await
    }

    /// Every worker in the registry, by name, each with whether it is dead (not seen for
    /// longer than its lease time, by the storage clock). Dead workers stay listed until a
    /// live worker's sweep removes them (see [`crate::WorkerOptions::worker_retention`]).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let now = self.storage().now().await?;
        let records = self.storage().list_workers().await?;
        Ok(records
            .into_iter()
            .map(|record| WorkerInfo {
                dead: record.is_dead(now),
                record,
            })
            .collect())
    }
}

/// A registered worker and whether it is dead, as [`Queue::workers`] lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// The record the worker keeps in storage.
    #[serde(flatten)]
    pub record: crate::storage::WorkerRecord,
    /// True when it has not renewed its record for longer than its lease time.
    pub dead: bool,
}
