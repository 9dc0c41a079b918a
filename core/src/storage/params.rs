//! What storage calls take and return: claim and completion items, filters, counts, and
//! one params struct per call with more than three arguments.

use crate::job::{Checkpoint, Job, JobId, JobStatus, Lease, NewJob};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What to claim in one [`super::Storage::dequeue`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct DequeueParams {
    /// Claim only from these queues.
    pub queues: Vec<String>,
    /// Claim only jobs of these task names (the worker's registered handlers).
    pub tasks: Vec<String>,
    /// At most this many jobs.
    pub limit: usize,
    /// How long the lease lasts before it must be renewed.
    pub lease_duration: Duration,
    /// The claiming worker's name, recorded on the job for operators.
    pub holder: String,
    /// Jobs carrying any of these flags are not claimed.
    pub forbidden_flags: Vec<String>,
}

/// A claimed job with the lease that fences its writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    /// The job, as it is after the claim (status running, attempt incremented). Shared,
    /// never changed after the claim: a backend that keeps its jobs in memory hands out
    /// the stored job without copying it (and copies it before it next writes it while
    /// a claim still holds it); others wrap the row they read (`job.into()`).
    pub job: Arc<Job>,
    /// The lease to present on every write for this attempt.
    pub lease: Lease,
    /// True when the backend knows the job holds no checkpoints because no attempt of
    /// it ended before this claim (its attempt history is empty), so none ever wrote
    /// one: the worker then skips reading them before the job's first durable call.
    /// False, what [`ClaimedJob::new`] sets, is always safe: the worker reads them.
    pub no_checkpoints: bool,
}

impl ClaimedJob {
    /// A claimed `job` (as it is after the claim) with its lease: the job's id and
    /// attempt, the claim's fencing `token` and when the lease runs out.
    pub fn new(job: impl Into<Arc<Job>>, token: i64, expires_at: DateTime<Utc>) -> Self {
        let job = job.into();
        ClaimedJob {
            lease: Lease {
                job_id: job.id,
                attempt: job.attempt,
                token,
                expires_at,
            },
            job,
            no_checkpoints: false,
        }
    }

    /// The same claim, saying whether the job is known to hold no checkpoints (see
    /// [`ClaimedJob::no_checkpoints`]). Say true only when no attempt of the job ended
    /// before the claim: a worker told so replays no earlier step.
    pub fn with_no_checkpoints(mut self, none: bool) -> Self {
        self.no_checkpoints = none;
        self
    }
}

/// One completion in a [`super::Storage::complete_many`] batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The attempt's lease.
    pub lease: Lease,
    /// The handler's output.
    pub result: Value,
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The error message to store as `last_error`.
    pub error: String,
    /// `Some(delay)`: retry after this delay from the storage clock's now, as status
    /// retrying. `None`: fail terminally.
    pub retry_in: Option<Duration>,
}

/// Filters for [`super::Storage::list_jobs`]. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only these statuses.
    pub statuses: Vec<JobStatus>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this task.
    pub task: Option<String>,
    /// Only children of this job.
    pub parent_id: Option<JobId>,
    /// Only jobs carrying this tag.
    pub tag: Option<String>,
    /// Only jobs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only jobs whose metadata holds this key with this value (a string, number,
    /// boolean or null; numbers compare by value). See [`crate::metadata`].
    pub metadata: Option<(String, Value)>,
    /// Only jobs with an id greater than this (keyset pagination).
    pub after_id: Option<JobId>,
    /// At most this many jobs; `None` means a backend default of 100.
    pub limit: Option<usize>,
}

impl JobFilter {
    /// Checks the filter's terms that can be malformed (the metadata term); backends call
    /// it before querying.
    ///
    /// # Errors
    /// [`crate::Error::InvalidOption`] for a metadata term with an empty key or an object
    /// or array value.
    pub fn validate(&self) -> crate::Result<()> {
        match &self.metadata {
            Some((key, value)) => crate::metadata::validate_match(key, value),
            None => Ok(()),
        }
    }
}

/// A queue's rate limit: at most `max_starts` jobs start (are claimed) per `period`,
/// across every worker. Windows are fixed: one opens at the first start after the
/// previous one closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Starts allowed per window.
    pub max_starts: u32,
    /// The window's length.
    pub period: Duration,
}

/// What one [`super::Storage::delete_jobs`] batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletedBatch {
    /// Jobs deleted: the matching roots and their descendants.
    pub deleted: u64,
    /// The highest id among the candidates this batch examined (deleted or skipped
    /// because part of their tree runs); the next batch starts after it. `None` when no
    /// candidate was left: the delete is done.
    pub last_id: Option<JobId>,
}

/// The number of jobs in one queue with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: JobStatus,
    /// How many jobs.
    pub count: u64,
}

/// How [`super::Storage::finish_jobs`] ends jobs by hand.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome {
    /// Mark completed with this result.
    Complete(Value),
    /// Mark failed for good with this error.
    Fail(String),
}

/// What [`super::Storage::spawn_children`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnChildrenParams<'a> {
    /// The parent's lease: the write is fenced by it.
    pub lease: &'a Lease,
    /// The checkpoint key that records the children's ids.
    pub key: &'a str,
    /// The checkpoint's name.
    pub name: &'a str,
    /// The children, inserted in order with their parent set.
    pub jobs: Vec<NewJob>,
}

/// What [`super::Storage::take_signals`] consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeSignalsParams<'a> {
    /// The waiting job's lease: the write is fenced by it.
    pub lease: &'a Lease,
    /// The signal name.
    pub name: &'a str,
    /// At most this many signals.
    pub limit: usize,
    /// The checkpoint key that records the payloads taken.
    pub key: &'a str,
}

/// What [`super::Storage::advance_schedule`] moves and inserts.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvanceScheduleParams<'a> {
    /// The schedule's name.
    pub name: &'a str,
    /// The cursor the caller read: the move happens only if it is still there.
    pub from: DateTime<Utc>,
    /// The new cursor.
    pub to: DateTime<Utc>,
    /// The jobs the ticks between `from` and `to` enqueue.
    pub jobs: Vec<NewJob>,
}

/// A running job whose lease expired, as [`super::Storage::release_stale_locks`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedJob {
    /// The job.
    pub job_id: JobId,
    /// Its routing queue.
    pub queue: String,
    /// Its task.
    pub task: String,
    /// The attempt whose lease expired.
    pub attempt: i32,
    /// Retrying (attempts left) or failed (attempts exhausted).
    pub status: JobStatus,
}

/// What one [`super::Storage::release_stale_locks`] sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleLocks {
    /// The jobs whose expired leases were released.
    pub released: Vec<ReleasedJob>,
    /// Waiting parents woken because a child had finished after they last changed.
    pub parents_woken: u64,
}

impl StaleLocks {
    /// Jobs released plus parents woken.
    pub fn touched(&self) -> u64 {
        self.released.len() as u64 + self.parents_woken
    }
}

/// One bounded batch of the retention purge ([`super::Storage::purge_retained`]): the
/// finish-time cut-off per final status (`None` keeps that status forever) and the most
/// workflow trees (a root job with its descendants) deleted in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionBatch {
    /// Completed jobs that finished before this go.
    pub completed_before: Option<DateTime<Utc>>,
    /// Failed jobs that finished before this go.
    pub failed_before: Option<DateTime<Utc>>,
    /// Cancelled jobs that finished before this go.
    pub cancelled_before: Option<DateTime<Utc>>,
    /// The most root jobs (each with its descendants) deleted by this batch.
    pub limit: usize,
}

/// What one retention batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPurged {
    /// True when another process held the retention lock: nothing was deleted, and the
    /// caller tries again at its next interval.
    pub busy: bool,
    /// Root jobs deleted (each with its descendants). Below the batch limit means no
    /// more jobs were due for deletion when the batch ran.
    pub roots: u64,
    /// Completed jobs deleted, roots and descendants.
    pub completed: u64,
    /// Failed jobs deleted, roots and descendants.
    pub failed: u64,
    /// Cancelled jobs deleted, roots and descendants.
    pub cancelled: u64,
}

impl RetentionPurged {
    /// Every job deleted, roots and descendants.
    pub fn jobs(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}

/// One checkpoint of a [`super::Storage::checkpoint_many`] batch: what
/// [`super::Storage::checkpoint`] takes, as one item.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointWrite {
    /// The lease of the job the checkpoint belongs to: this item is fenced by it.
    pub lease: Lease,
    /// The checkpoint to store.
    pub checkpoint: Checkpoint,
}
