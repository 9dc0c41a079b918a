//! The storage contract every backend implements.
//!
//! This is the lowest floor above the job model and the errors: it imports nothing from
//! the queue, the worker, workflows or schedules, and the types its calls take and return
//! live beside it ([`params`], [`record`]). The engine reaches storage only through
//! [`Storage`] (by way of [`crate::instrumented::InstrumentedStorage`]), so anything the
//! engine does works on every backend. The conformance suite (feature `testing`) is this
//! contract's executable specification.
//!
//! The vocabulary is the one the library was specified with: `enqueue`, `dequeue`,
//! `complete`, `fail`, `checkpoint`, `heartbeat` and `release_stale_locks`.

pub mod params;
pub mod record;
pub mod share;

pub use params::{
    AdvanceScheduleParams, CheckpointWrite, ClaimedJob, Completion, DeletedBatch, DequeueParams,
    Failure, JobFilter, ManualOutcome, QueueCount, RateLimit, ReleasedJob, SpawnChildrenParams,
    StaleLocks, TakeSignalsParams,
};
pub use params::{RetentionBatch, RetentionPurged};
pub use record::{AttemptOutcome, AttemptRecord, ScheduleRecord, WorkerQueue, WorkerRecord};

use crate::error::Result;
use crate::job::{Checkpoint, Enqueued, Job, JobId, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// What a backend can do beyond the contract, which every backend implements whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Wakes workers in other processes on enqueue (Postgres NOTIFY).
    pub cross_process_wakeup: bool,
    /// Shared safely by several processes.
    pub multi_process: bool,
    /// Keeps jobs across restarts.
    pub durable: bool,
}

impl Capabilities {
    /// Capabilities with the given flags.
    pub fn new(cross_process_wakeup: bool, multi_process: bool, durable: bool) -> Self {
        Capabilities {
            cross_process_wakeup,
            multi_process,
            durable,
        }
    }
}

/// A storage backend.
///
/// # Leases
/// Every write made on behalf of a running attempt takes its [`Lease`] and succeeds only
/// while that lease is the job's current one (same job, status running, same token);
/// otherwise it returns [`crate::Error::LeaseLost`] and changes nothing. Times come from
/// the backend's clock ([`Storage::now`]).
///
/// # Workflows
/// - `waiting` jobs are claimable once their run_at is due, like pending ones.
/// - Waking a job: a waiting or pending job's run_at becomes now; a running job gets a
///   wake request, which its next [`Storage::suspend`] honours by making it due at once.
/// - A child's final write (complete, terminal fail, cancel, failure on release of a
///   stale lock) wakes its parent in the same transaction.
/// - [`Storage::cancel`] cancels the job's unfinished descendants too.
/// - [`Storage::release_stale_locks`] also wakes waiting parents one of whose children
///   finished after the parent last changed (healing a parent a crash left waiting).
///
/// # Errors
/// Backends report their own failures as [`crate::Error::Storage`] with a
/// [`crate::StorageErrorKind`] that says whether a retry can help.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // ----- The backend -----

    /// A short name for logs (`memory`, `postgres`, `sqlite`).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates or upgrades the backend's schema. Safe to run twice and concurrently.
    async fn migrate(&self) -> Result<()>;

    /// The backend's current time: the database clock where there is one.
    async fn now(&self) -> Result<DateTime<Utc>>;

    /// A channel that changes whenever work may have become available (an enqueue here,
    /// or in another process where the backend can tell). Workers wait on it between
    /// polls; `None` means polling only.
    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    // ----- Jobs -----

    /// Inserts one job. With a dedupe key that an unfinished job already holds, inserts
    /// nothing and returns that job's id with `created: false` (or replaces it, as its
    /// [`crate::KeyMode`] says).
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued>;

    /// Inserts many jobs, in order, with the same dedupe rule as [`Storage::enqueue`].
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// One job by id.
    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>>;

    /// Jobs matching the filter, by ascending id.
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>>;

    /// The number of jobs per queue and status (zero counts omitted), in no particular
    /// order.
    async fn counts(&self) -> Result<Vec<QueueCount>>;

    /// The number of jobs per queue and final status (completed, failed, cancelled) that
    /// finished at or after `since` (zero counts omitted), by queue, then status in
    /// lifecycle order.
    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>>;

    /// A job's attempt history, oldest first: one record per ended attempt (appended in
    /// the same write that ended it: complete, fail, release, suspend, a stale lock's
    /// release, a cancel of a running job), then, while the job runs, its current attempt
    /// as `running`. Empty for a job that never ran or does not exist.
    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>>;

    /// Cancels a job that has not finished: pending, retrying or waiting jobs become
    /// cancelled at once; a running job becomes cancelled and its lease stops being
    /// current. Its unfinished descendants are cancelled too. Returns false when the job
    /// was already finished.
    async fn cancel(&self, job_id: JobId) -> Result<bool>;

    /// Deletes a job that is not running, with its checkpoints and signals. Returns false
    /// when no such job exists.
    ///
    /// # Errors
    /// [`crate::Error::InvalidState`] for a running job.
    async fn delete_job(&self, job_id: JobId) -> Result<bool>;

    // Parent and children in one write (atomic bundles).

    /// Inserts `parent`, then `children` with their `parent_id` set to the parent's id,
    /// in one transaction: all of them or none, whatever stops it part-way (a crash, an
    /// error). Returns the parent's result and each child's, in order. The parent's
    /// dedupe key follows the rule of [`Storage::enqueue`]; when it matches an unfinished
    /// job (`created` false, in any [`crate::KeyMode`]), that job is the bundle and already
    /// has its children: nothing else is inserted, and the children's list is empty.
    /// Children's own dedupe keys follow the same rule.
    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)>;

    // Awaiting results (issue 15): what `Queue::wait_for` waits on.

    /// A channel that changes whenever a job watched with [`Storage::watch_job`] may have
    /// finished, here or (where the backend can tell) in another process. Waiters re-read
    /// their job when it changes and poll as a fallback; `None` means polling only.
    fn finishes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The job as it is now, after asking the backend to announce its final write on
    /// [`Storage::finishes`] (PostgreSQL marks the row, so that write sends a NOTIFY to
    /// every process). A waiter subscribes first, then calls this, so a finish racing the
    /// call is either seen in the job returned or announced. The default only reads it.
    async fn watch_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.get_job(job_id).await
    }

    // ----- Jobs: delete by filter -----

    /// Deletes one bounded batch of jobs matching `filter`, in one transaction, and
    /// reports where the next batch starts ([`crate::Queue::delete_jobs`] loops).
    ///
    /// The candidates are the jobs matching every term of `filter` (its `after_id`
    /// included) that are not running and are roots: no parent, or a parent that no
    /// longer exists. At most `filter.limit` of them (default 100), by ascending id. Each
    /// candidate is deleted together with all its descendants (a workflow's children, a
    /// bundle's members, and theirs), with their checkpoints, signals and history; a
    /// candidate any job of whose tree is running is left whole. So a workflow's child is
    /// never deleted out from under its parent: it goes only with its root.
    ///
    /// # Errors
    /// [`crate::Error::InvalidOption`] for a malformed filter ([`JobFilter::validate`]),
    /// and storage errors.
    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch>;

    // ----- Leases: claiming and finishing attempts -----

    /// Atomically claims up to `limit` due, claimable jobs from the given queues and
    /// tasks, ordered by priority (higher first), then run_at, then id. Each claimed job
    /// becomes running with `attempt + 1` and a fresh lease. No job is claimed twice.
    /// A backend that knows a claimed job holds no checkpoints (no attempt of it ended
    /// before) says so with [`ClaimedJob::with_no_checkpoints`], which spares the worker
    /// a read; one that does not know leaves it false.
    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>>;

    /// Completes a running job with its result. Fenced.
    async fn complete(&self, lease: &Lease, result: Value) -> Result<()>;

    /// Completes many jobs; one result per item, in order. Each item is fenced on its own:
    /// a lost lease fails that item only. The default completes them one by one.
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
    /// (attempts exhausted), and heals waiting parents (see the trait docs). Returns the
    /// jobs it released and how many parents it woke.
    async fn release_stale_locks(&self) -> Result<StaleLocks>;

    // Snooze and progress (issue 15).

    /// Snoozes a running job: it becomes claimable again at now + `delay` (pending, or
    /// retrying when an earlier attempt ran) without spending its attempt, and the attempt
    /// is recorded as [`AttemptOutcome::Snoozed`]. Fenced.
    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()>;

    /// Stores the running job's progress (any JSON value), replacing the previous one;
    /// [`Storage::get_job`] returns it in [`Job::progress`]. Fenced.
    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()>;

    // ----- Workflows: checkpoints, suspension, children, signals -----

    /// Stores a checkpoint for the leased job, replacing one with the same key, with
    /// `created_at` set to the storage clock's now. Fenced.
    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()>;

    /// All checkpoints of a job, in key order.
    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>>;

    /// The checkpoints of several jobs: one list per id, in `job_ids`' order, each what
    /// [`Storage::list_checkpoints`] returns for that id (empty for a job without any or
    /// unknown). A worker loads the checkpoints of the jobs whose first durable calls
    /// arrive together with one call. The default asks for each id in turn; a backend
    /// overrides it to answer with one round trip.
    async fn list_checkpoints_many(&self, job_ids: Vec<JobId>) -> Result<Vec<Vec<Checkpoint>>> {
        let mut out = Vec::with_capacity(job_ids.len());
        for id in job_ids {
            out.push(self.list_checkpoints(id).await?);
        }
        Ok(out)
    }

    /// Deletes a job's checkpoints; returns how many.
    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64>;

    /// Suspends a running job to `waiting` without spending its attempt: it becomes due at
    /// `wake_at` (`None`: only when woken). A pending wake request makes it due at once.
    /// Fenced.
    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()>;

    /// In one transaction, fenced by the parent's lease: inserts the children as children
    /// of the leased job (their `parent_id` is set to it) and stores a checkpoint at the
    /// key and name given whose value is the array of the children's ids. Returns the ids
    /// in order.
    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>>;

    /// Stores a signal for a job durably and wakes the job.
    ///
    /// # Errors
    /// [`crate::Error::JobNotFound`]; [`crate::Error::JobFinished`] for a finished job.
    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()>;

    /// In one transaction, fenced: consumes up to `limit` of the leased job's oldest
    /// signals named `name` (in the order they were sent) and, if any were taken, stores a
    /// checkpoint at `key` named `signal:<name>` whose value is the array of their
    /// payloads. Returns the payloads (empty when none were waiting).
    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>>;

    /// The oldest unconsumed signal named `name` for a job, without consuming it.
    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>>;

    // ----- Workflows: group-committed checkpoints -----

    /// Stores many checkpoints, as [`Storage::checkpoint`] stores one, in one write where
    /// the backend can (one transaction, one commit): concurrent durable calls and steps
    /// share it. One result per item, in order; each item is fenced by its own lease, and
    /// a lease no longer held gives [`crate::Error::LeaseLost`] for its items only,
    /// storing nothing for them. Items of one job with the same key are applied in order
    /// (the last wins). The default stores them one by one.
    async fn checkpoint_many(&self, items: Vec<CheckpointWrite>) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.checkpoint(&item.lease, item.checkpoint).await);
        }
        Ok(out)
    }

    // ----- Schedules -----

    /// Inserts a schedule named `name` with its cursor at `now`, or, when it exists,
    /// replaces its definition and keeps its cursor and paused state.
    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleRecord>>;

    /// Pauses or resumes a schedule; false when none has this name.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool>;

    /// Removes a schedule; false when none has this name.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;

    /// In one transaction: if the schedule's cursor is still `from`, moves it to `to`,
    /// inserts the jobs, records the last job's id, and returns the new ids; otherwise
    /// (another scheduler moved it first, or the schedule is gone) changes nothing and
    /// returns `None`.
    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>>;

    // ----- Operations -----

    /// Requeues failed or cancelled jobs to run now with a fresh attempt count; their
    /// checkpoints are deleted unless `keep_checkpoints` (then a workflow resumes where it
    /// stopped). Returns how many were requeued.
    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64>;

    /// Moves a pending, retrying or waiting job's run_at; false for other jobs.
    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool>;

    /// Completes or permanently fails unfinished jobs that are not running (running ones
    /// are left alone, as graphile-worker does). Returns how many changed. A child's parent
    /// is woken as for any final write.
    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64>;

    /// Deletes finished jobs (completed, failed, cancelled) that finished before
    /// `older_than`, with their checkpoints and signals. Returns how many.
    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64>;

    // ----- Operations: retention (the automatic purge) -----

    /// One bounded batch of the retention purge. Deletes up to `batch.limit` root jobs
    /// (jobs without a parent, or whose parent is gone) whose final status has a cut-off
    /// and that finished before it, oldest finish first, each with all its descendants,
    /// checkpoints, signals and attempt history. A tree with any unfinished descendant
    /// is kept whole, and a child is never deleted on its own while its root exists. The
    /// batch runs under a lock shared by every process using this storage (taken inside
    /// the batch's transaction); when another batch holds it, nothing is deleted and the
    /// result says `busy`.
    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged>;

    /// Pauses or resumes a queue: nothing is claimed from a paused queue.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// The paused queues, sorted.
    async fn paused_queues(&self) -> Result<Vec<String>>;

    // ----- Flow control: running caps per key -----

    /// Sets how many jobs of a serial key may run at once across every worker (the
    /// default, with no limit set, is 1); `None` removes the limit (back to 1). A claim
    /// takes a job of a key only while fewer than its limit run. Lowering a limit below
    /// what runs now stops no job: claims wait until enough finish.
    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()>;

    /// The keys with a limit set, by key, with their limits.
    async fn key_limits(&self) -> Result<Vec<(String, u32)>>;

    // ----- Flow control: rate limits per queue -----

    /// Sets a queue's rate limit (`None` removes it): a claim from the queue takes at most
    /// what is left of the current window's starts, whichever processes claim. Claims
    /// naming several queues, one of them limited, claim each queue in turn.
    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()>;

    /// The queues with a rate limit, by queue.
    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>>;

    // ----- Workers: the registry -----

    /// Records a worker, or replaces the record of one with the same name; its
    /// `last_seen` becomes now.
    async fn register_worker(&self, worker: WorkerRecord) -> Result<()>;

    /// Sets a registered worker's `last_seen` to now; false when no worker has this name
    /// (it was removed as dead: the caller registers again).
    async fn touch_worker(&self, name: &str) -> Result<bool>;

    /// Removes a worker's record; false when none has this name.
    async fn deregister_worker(&self, name: &str) -> Result<bool>;

    /// Every registered worker, by name, with `last_seen` as stored.
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Removes the records of workers last seen before `before`; returns how many.
    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// A shared storage handle.
pub type DynStorage = Arc<dyn Storage>;
