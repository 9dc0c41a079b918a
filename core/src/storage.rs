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
}

impl Capabilities {
    /// Capabilities with the given flags.
    pub fn new(cross_process_wakeup: bool, multi_process: bool, durable: bool) -> Self {
        Capabilities {
            cross_process_wakeup,
            multi_process,
            durable,
            workflows: false,
        }
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

    /// The error for an operation this backend does not implement.
    fn unsupported(&self, operation: &'static str) -> crate::Error {
        crate::Error::Unsupported {
            backend: self.name(),
            operation,
        }
    }
}

/// A shared storage handle.
pub type DynStorage = Arc<dyn Storage>;
