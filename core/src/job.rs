//! The job model: what a job is, its status, and what a new job carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A job's id, unique within one storage.
pub type JobId = i64;

/// The routing queue a job goes to when its options name none.
pub const DEFAULT_QUEUE: &str = "default";

/// Retries after the first attempt when neither the job nor its task sets them.
pub const DEFAULT_RETRIES: u32 = 3;

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting to be claimed; `run_at` may lie in the future.
    Pending,
    /// Failed an attempt and waits for its next one at `run_at`; claimable like pending.
    Retrying,
    /// Claimed by a worker that holds its lease.
    Running,
    /// A workflow suspended on a timer, a signal or children; holds no worker slot.
    Waiting,
    /// Finished successfully; `result` holds the handler's output.
    Completed,
    /// Finished unsuccessfully: attempts exhausted or a non-retryable error.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Retrying,
        JobStatus::Running,
        JobStatus::Waiting,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The status's stable name, as stored in SQL backends.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Retrying => "retrying",
            JobStatus::Running => "running",
            JobStatus::Waiting => "waiting",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// True for statuses a worker may claim (pending and retrying).
    pub fn is_claimable(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Retrying)
    }

    /// True for completed, failed and cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is none of [`JobStatus::ALL`]: stored data this version cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown job status `{}` in storage", self.0)
    }
}

impl std::error::Error for UnknownStatus {}

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// The lease a worker holds on a running job. Every write made on behalf of the job's
/// attempt carries it; storage refuses the write with [`crate::Error::LeaseLost`] once
/// the lease is no longer current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased job.
    pub job_id: JobId,
    /// The attempt number this lease belongs to (1 for the first attempt).
    pub attempt: i32,
    /// A random token unique to this claim; the fencing token.
    pub token: i64,
    /// When the lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// Who holds a running job's lease, as stored on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The worker that claimed the job.
    pub holder: String,
    /// The fencing token.
    pub token: i64,
    /// When the lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The registered task name that runs it.
    pub task: String,
    /// The task's arguments as JSON.
    pub payload: Value,
    /// The routing queue.
    pub queue: String,
    /// Higher runs first.
    pub priority: i32,
    /// Lifecycle status.
    pub status: JobStatus,
    /// Attempts started so far (1 while the first attempt runs).
    pub attempt: i32,
    /// Attempts allowed in all (retries + 1).
    pub max_attempts: i32,
    /// Not claimable before this time.
    pub run_at: DateTime<Utc>,
    /// The current lease while running.
    pub lease: Option<LeaseInfo>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The handler's output once completed.
    pub result: Option<Value>,
    /// The dedupe key, unique among unfinished jobs.
    pub dedupe_key: Option<String>,
    /// Per-attempt time limit in milliseconds.
    pub timeout_ms: Option<i64>,
    /// When the job was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The W3C `traceparent` of the span that enqueued it: its attempts' spans follow
    /// from it, so one trace shows the request that enqueued a job and the job's run.
    #[serde(default)]
    pub trace_context: Option<String>,
    /// The workflow (or bundle) that spawned it.
    #[serde(default)]
    pub parent_id: Option<JobId>,
    /// Labels to find it by in listings.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Flags a worker can refuse.
    #[serde(default)]
    pub flags: Vec<String>,
    /// At most one job per serial key runs at a time.
    #[serde(default)]
    pub serial_key: Option<String>,
    /// The last progress its handler reported ([`crate::JobContext::progress`]); kept
    /// after the job finishes.
    #[serde(default)]
    pub progress: Option<Value>,
    /// Key/value pairs set at enqueue, to find the job by (see [`crate::metadata`]).
    #[serde(default)]
    pub metadata: crate::metadata::Metadata,
}

impl Job {
    /// True when the job failed an attempt and waits for the next one.
    pub fn is_retrying(&self) -> bool {
        self.status == JobStatus::Retrying
    }

    /// The per-attempt timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }
}

/// A job to insert, already validated. Built by [`crate::Queue::enqueue`] from
/// [`crate::JobOptions`]; backends receive it through [`crate::Storage::enqueue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Task name.
    pub task: String,
    /// Arguments as JSON.
    pub payload: Value,
    /// Routing queue.
    pub queue: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts allowed in all (retries + 1), at least 1.
    pub max_attempts: i32,
    /// When the job becomes claimable; `None` with no delay means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Delay from the storage clock's now; used when `run_at` is `None`.
    pub delay: Option<Duration>,
    /// A key unique among unfinished jobs: enqueueing a second job with the same key
    /// returns the existing job's id instead.
    pub dedupe_key: Option<String>,
    /// Per-attempt time limit in milliseconds.
    pub timeout_ms: Option<i64>,
    /// The parent job, for a child spawned by a workflow or a member of a bundle. A child's
    /// final write (completed, failed, cancelled) wakes its parent in the same
    /// transaction.
    #[serde(default)]
    pub parent_id: Option<JobId>,
    /// What a second enqueue with the same `dedupe_key` does.
    #[serde(default)]
    pub key_mode: KeyMode,
    /// At most one job per serial key runs at a time, across all workers.
    #[serde(default)]
    pub serial_key: Option<String>,
    /// Flags a worker can refuse (see `WorkerOptions::forbid_flags`).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Labels to find the job by in listings.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The W3C `traceparent` of the enqueuing span, stored with the job (set by
    /// [`crate::Queue`] from the current span).
    #[serde(default)]
    pub trace_context: Option<String>,
    /// Key/value pairs to find the job by (validated by [`crate::JobOptions::build`]).
    #[serde(default)]
    pub metadata: crate::metadata::Metadata,
}

/// What enqueueing a job whose key an unfinished job already holds does (the key is
/// [`NewJob::dedupe_key`]), as graphile-worker's `job_key_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// Keep the existing job unchanged and return its id.
    #[default]
    Dedupe,
    /// Debounce: replace the waiting job's payload, run_at and options. A job whose
    /// holder is running gives up its key, and a new job is created.
    Replace,
    /// Throttle: like `Replace`, but the existing run_at stays.
    PreserveRunAt,
}

impl KeyMode {
    /// The mode's stable name, as stored in SQL backends.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Dedupe => "dedupe",
            KeyMode::Replace => "replace",
            KeyMode::PreserveRunAt => "preserve_run_at",
        }
    }
}

/// The run_at of a job suspended with no timer: it waits for a signal or its children.
pub fn far_future() -> DateTime<Utc> {
    // 9999-12-31T00:00:00Z fits every backend's timestamp type.
    DateTime::from_timestamp(253_402_214_400, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl NewJob {
    /// A job for `task` with `payload` and default options.
    pub fn new(task: impl Into<String>, payload: Value) -> Self {
        NewJob {
            task: task.into(),
            payload,
            queue: DEFAULT_QUEUE.to_string(),
            priority: 0,
            max_attempts: DEFAULT_RETRIES as i32 + 1,
            run_at: None,
            delay: None,
            dedupe_key: None,
            timeout_ms: None,
            parent_id: None,
            key_mode: KeyMode::Dedupe,
            serial_key: None,
            flags: Vec::new(),
            tags: Vec::new(),
            trace_context: None,
            metadata: crate::metadata::Metadata::new(),
        }
    }

    /// The run time relative to `now` (the storage clock).
    pub fn resolve_run_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match (self.run_at, self.delay) {
            (Some(at), _) => at,
            (None, Some(d)) => now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
            (None, None) => now,
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job's id: the new job's, or the existing one's when deduplicated.
    pub id: JobId,
    /// False when an unfinished job with the same dedupe key already existed.
    pub created: bool,
}

/// A stored outcome of a durable call or step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Hierarchical position, e.g. `2` or `2/0`.
    pub key: String,
    /// The called task's (or step's) name, checked on replay.
    pub name: String,
    /// The success value, or the terminal error message.
    pub outcome: CheckpointOutcome,
    /// When storage wrote it (set by storage; ignored on a write).
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// A hash of the call's arguments (`fnv1a64:<hex>`), checked on replay; `None` for
    /// steps, signals, children and checkpoints written before arguments were hashed.
    #[serde(default)]
    pub args_hash: Option<String>,
}

/// The stored outcome of a checkpointed call: only successes and terminal errors are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointOutcome {
    /// The call returned this value.
    Ok(Value),
    /// The call failed terminally with this message.
    Err(String),
}

/// A fresh fencing token: unique per claim with overwhelming probability, across
/// processes (it mixes the time, the process id and a counter through SplitMix64).
pub fn new_lease_token() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17);
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 1) as i64
}
