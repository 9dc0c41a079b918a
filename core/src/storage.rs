//! The storage contract every backend implements.
//!
//! The engine reaches storage only through [`Storage`], so anything the engine does works
//! on every backend. The conformance suite (feature `testing`) is this contract's
//! executable specification.

use crate::error::Result;
use crate::job::{Checkpoint, Enqueued, Job, JobId, JobStatus, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What to claim in one [`Storage::dequeue`] call.
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
    /// The job, as it is after the claim (status running, attempt incremented).
    pub job: Job,
    /// The lease to present on every write for this attempt.
    pub lease: Lease,
}

/// One completion in a [`Storage::complete_many`] batch.
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

/// Filters for [`Storage::list_jobs`]. Empty fields match everything.
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
    /// Only jobs with an id greater than this (keyset pagination).
    pub after_id: Option<JobId>,
    /// At most this many jobs; `None` means a backend default of 100.
    pub limit: Option<usize>,
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

/// What a backend can do beyond the contract's required calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Wakes workers in other processes on enqueue (Postgres NOTIFY).
    pub cross_process_wakeup: bool,
    /// Shared safely by several processes.
    pub multi_process: bool,
    /// Keeps jobs across restarts.
    pub durable: bool,
    /// Implements the workflow calls: suspend, children, signals, delete.
    pub workflows: bool,
    /// Implements schedules, job-key modes, serial keys, flags, tags and the management
    /// calls.
    pub operations: bool,
}

impl Capabilities {
    /// Capabilities with the given flags.
    pub fn new(cross_process_wakeup: bool, multi_process: bool, durable: bool) -> Self {
        Capabilities {
            cross_process_wakeup,
            multi_process,
            durable,
            workflows: false,
            operations: false,
        }
    }

    /// The same capabilities, with operations support as given.
    pub fn with_operations(mut self, operations: bool) -> Self {
        self.operations = operations;
        self
    }

    /// The same capabilities, with workflow support as given.
    pub fn with_workflows(mut self, workflows: bool) -> Self {
        self.workflows = workflows;
        self
    }
}

/// A storage backend.
///
/// Every write made on behalf of a running attempt takes its [`Lease`] and succeeds only
/// while that lease is the job's current one (same job, status running, same token);
/// otherwise it returns [`crate::Error::LeaseLost`] and changes nothing. Times come from
/// the backend's clock ([`Storage::now`]).
///
/// # Workflows
/// Backends whose [`Capabilities::workflows`] is true also implement the calls after
/// [`Storage::wakeups`] and these rules on the calls before them:
/// - `waiting` jobs are claimable once their run_at is due, like pending ones.
/// - Waking a job: a waiting or pending job's run_at becomes now; a running job gets a
///   wake request, which its next [`Storage::suspend`] honours by making it due at once.
/// - A child's final write (complete, terminal fail, cancel, failure on reclaim) wakes
///   its parent in the same transaction.
/// - [`Storage::cancel`] cancels the job's unfinished descendants too.
/// - [`Storage::reclaim_expired`] also wakes waiting parents one of whose children
///   finished after the parent last changed (healing a parent a crash left waiting).
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs (`memory`, `postgres`, `sqlite`).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates or upgrades the backend's schema. Safe to run twice and concurrently.
    async fn migrate(&self) -> Result<()>;

    /// The backend's current time: the database clock where there is one.
    async fn now(&self) -> Result<DateTime<Utc>>;

    /// Inserts one job. With a dedupe key that an unfinished job already holds, inserts
    /// nothing and returns that job's id with `created: false`.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued>;

    /// Inserts many jobs, in order, with the same dedupe rule as [`Storage::enqueue`].
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Atomically claims up to `limit` due, claimable jobs from the given queues and
    /// tasks, ordered by priority (higher first), then run_at, then id. Each claimed job
    /// becomes running with `attempt + 1` and a fresh lease. No job is claimed twice.
    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>>;

    /// Completes a running job with its result. Fenced.
    async fn complete(&self, lease: &Lease, result: Value) -> Result<()>;

    /// Completes many jobs; one result per item, in order. Each item is fenced on its own:
    /// a lost lease fails that item only.
    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.complete(&item.lease, item.result).await);
        }
        Ok(out)
    }

    /// Records a failed attempt: back to retrying at now + `retry_in`, or failed. Fenced.
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()>;

    /// Returns a running job to pending without spending its attempt (graceful shutdown).
    /// Fenced.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Extends a lease to now + `extend`; returns the renewed lease. Fenced.
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease>;

    /// Extends many leases to now + `extend`; one result per lease, in order, each fenced
    /// on its own (a lease no longer held gives [`crate::Error::LeaseLost`] for that item
    /// only). A worker renews every lease it holds, buffered or running, with one call
    /// per heartbeat interval, so a storage that can write them together should: one
    /// statement per lease made a worker holding 1,500 jobs send 1,500 synchronous
    /// commits per interval. The default renews them one by one.
    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            out.push(self.heartbeat(lease, extend).await);
        }
        Ok(out)
    }

    /// Returns running jobs whose lease expired to retrying (attempts left) or failed
    /// (attempts exhausted). Returns how many jobs it touched.
    async fn reclaim_expired(&self) -> Result<u64>;

    /// Stores a checkpoint for the leased job, replacing one with the same key. Fenced.
    async fn save_checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()>;

    /// All checkpoints of a job, in key order.
    async fn checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>>;

    /// Deletes a job's checkpoints; returns how many.
    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64>;

    /// One job by id.
    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>>;

    /// Jobs matching the filter, by ascending id.
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>>;

    /// The number of jobs per queue and status (zero counts omitted).
    async fn counts(&self) -> Result<Vec<QueueCount>>;

    /// Cancels a job that has not finished: pending, retrying or waiting jobs become
    /// cancelled at once; a running job becomes cancelled and its lease stops being
    /// current. Returns false when the job was already finished.
    async fn cancel(&self, job_id: JobId) -> Result<bool>;

    /// A channel that changes whenever work may have become available (an enqueue here,
    /// or in another process where the backend can tell). Workers wait on it between
    /// polls; `None` means polling only.
    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Suspends a running job to `waiting` without spending its attempt: it becomes due at
    /// `wake_at` (`None`: only when woken). A pending wake request makes it due at once.
    /// Fenced.
    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        let _ = (lease, wake_at);
        Err(self.unsupported("suspend"))
    }

    /// In one transaction, fenced by the parent's lease: inserts `jobs` as children of the
    /// leased job (their `parent_id` is set to it) and stores a checkpoint at `key` named
    /// `name` whose value is the array of the children's ids. Returns the ids in order.
    async fn spawn_children(
        &self,
        lease: &Lease,
        key: &str,
        name: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        let _ = (lease, key, name, jobs);
        Err(self.unsupported("spawn_children"))
    }

    /// Stores a signal for a job durably and wakes the job.
    ///
    /// # Errors
    /// [`crate::Error::JobNotFound`]; [`crate::Error::JobFinished`] for a finished job.
    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        let _ = (job_id, name, payload);
        Err(self.unsupported("send_signal"))
    }

    /// In one transaction, fenced: consumes up to `limit` of the leased job's oldest
    /// signals named `name` (in the order they were sent) and, if any were taken, stores a
    /// checkpoint at `key` named `signal:<name>` whose value is the array of their
    /// payloads. Returns the payloads (empty when none were waiting).
    async fn take_signals(
        &self,
        lease: &Lease,
        name: &str,
        limit: usize,
        key: &str,
    ) -> Result<Vec<Value>> {
        let _ = (lease, name, limit, key);
        Err(self.unsupported("take_signals"))
    }

    /// The oldest unconsumed signal named `name` for a job, without consuming it.
    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        let _ = (job_id, name);
        Err(self.unsupported("peek_signal"))
    }

    /// Deletes a job that is not running, with its checkpoints and signals. Returns false
    /// when no such job exists.
    ///
    /// # Errors
    /// [`crate::Error::InvalidState`] for a running job.
    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        let _ = job_id;
        Err(self.unsupported("delete_job"))
    }

    /// Inserts a schedule named `name` with its cursor at `now`, or, when it exists,
    /// replaces its definition and keeps its cursor and paused state.
    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let _ = (name, definition, now);
        Err(self.unsupported("schedules"))
    }

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<crate::schedule::ScheduleRecord>> {
        Err(self.unsupported("schedules"))
    }

    /// Pauses or resumes a schedule; false when none has this name.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let _ = (name, paused);
        Err(self.unsupported("schedules"))
    }

    /// Removes a schedule; false when none has this name.
    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let _ = name;
        Err(self.unsupported("schedules"))
    }

    /// In one transaction: if the schedule's cursor is still `from`, moves it to `to`,
    /// inserts `jobs`, records the last job's id, and returns the new ids; otherwise
    /// (another scheduler moved it first, or the schedule is gone) changes nothing and
    /// returns `None`.
    async fn advance_schedule(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        jobs: Vec<NewJob>,
    ) -> Result<Option<Vec<JobId>>> {
        let _ = (name, from, to, jobs);
        Err(self.unsupported("schedules"))
    }

    /// Requeues failed or cancelled jobs to run now with a fresh attempt count; their
    /// checkpoints are deleted unless `keep_checkpoints` (then a workflow resumes where it
    /// stopped). Returns how many were requeued.
    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        let _ = (ids, keep_checkpoints);
        Err(self.unsupported("retry_jobs"))
    }

    /// Moves a pending, retrying or waiting job's run_at; false for other jobs.
    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        let _ = (job_id, run_at);
        Err(self.unsupported("reschedule_job"))
    }

    /// Completes or permanently fails unfinished jobs that are not running (running ones
    /// are left alone, as graphile-worker does). Returns how many changed. A child's parent
    /// is woken as for any final write.
    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        let _ = (ids, outcome);
        Err(self.unsupported("finish_jobs"))
    }

    /// Deletes finished jobs (completed, failed, cancelled) that finished before
    /// `older_than`, with their checkpoints and signals. Returns how many.
    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let _ = older_than;
        Err(self.unsupported("purge_finished"))
    }

    /// Pauses or resumes a queue: nothing is claimed from a paused queue.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let _ = (queue, paused);
        Err(self.unsupported("pause_queue"))
    }

    /// The paused queues, sorted.
    async fn paused_queues(&self) -> Result<Vec<String>> {
        Err(self.unsupported("pause_queue"))
    }

    /// The error for an operation this backend does not implement.
    fn unsupported(&self, operation: &'static str) -> crate::Error {
        crate::Error::Unsupported {
            backend: self.name(),
            operation,
        }
    }
}

/// How [`Storage::finish_jobs`] ends jobs by hand.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome {
    /// Mark completed with this result.
    Complete(Value),
    /// Mark failed for good with this error.
    Fail(String),
}

/// A shared storage handle.
pub type DynStorage = Arc<dyn Storage>;
