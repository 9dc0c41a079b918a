//! Records the storage keeps beside jobs: schedules and the worker registry.

use crate::job::JobId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
