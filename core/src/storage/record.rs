//! Records the storage keeps beside jobs: schedules and the worker registry.

use crate::job::JobId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A schedule as stored: its definition (a serialized [`crate::Schedule`]) and cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The schedule's unique name.
    pub name: String,
    /// The serialized [`crate::Schedule`].
    pub definition: Value,
    /// Paused schedules fire no ticks (missed ticks follow the catch-up rule on resume).
    pub paused: bool,
    /// The last tick handled (enqueued or skipped); ticks after it are due.
    pub cursor: DateTime<Utc>,
    /// The job the last enqueued tick created.
    pub last_job_id: Option<JobId>,
}

/// One queue a worker serves, with its concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerQueue {
    /// The routing queue.
    pub name: String,
    /// How many of its jobs the worker runs at once.
    pub concurrency: usize,
}

/// A worker as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's name, unique among live workers (the lease holder on its jobs).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<WorkerQueue>,
    /// The durable-jobs version it runs.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last renewed its record (set by storage on register and touch).
    pub last_seen: DateTime<Utc>,
    /// Its lease duration in milliseconds: a worker not seen for this long is dead.
    pub lease_ms: i64,
}

impl WorkerRecord {
    /// True when the worker has not renewed its record for longer than its lease time
    /// at `now`: it crashed, hung or lost its connection.
    pub fn is_dead(&self, now: DateTime<Utc>) -> bool {
        now - self.last_seen > chrono::Duration::milliseconds(self.lease_ms)
    }
}

/// How one attempt of a job ended, as its history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Still running (the current attempt of a running job).
    Running,
    /// The handler returned a result.
    Completed,
    /// The attempt failed and the job will run again.
    Retrying,
    /// The attempt failed and the job failed for good.
    Failed,
    /// Returned unfinished at shutdown, without spending the attempt.
    Released,
    /// A workflow suspended to wait (sleep, signal, children).
    Suspended,
    /// The lease expired (the worker crashed, hung or lost its connection).
    Reclaimed,
    /// The job was cancelled while this attempt ran.
    Cancelled,
    /// The handler snoozed: the job runs again later without spending the attempt.
    Snoozed,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 9] = [
        AttemptOutcome::Running,
        AttemptOutcome::Completed,
        AttemptOutcome::Retrying,
        AttemptOutcome::Failed,
        AttemptOutcome::Released,
        AttemptOutcome::Suspended,
        AttemptOutcome::Reclaimed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::Snoozed,
    ];

    /// The outcome's stable name, as stored (`completed`, `retrying`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Suspended => "suspended",
            AttemptOutcome::Reclaimed => "reclaimed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Snoozed => "snoozed",
        }
    }

    /// The outcome named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of a job, as its history records it. Storage appends one when an attempt
/// ends; the attempt of a running job is reported from the job itself as `running`. The
/// history goes with its job when the job is deleted or purged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt number (1-based). A suspended workflow resumes under the same number.
    pub attempt: i32,
    /// The worker that ran it (the lease holder).
    pub worker: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error it ended with, if any.
    pub error: Option<String>,
}
