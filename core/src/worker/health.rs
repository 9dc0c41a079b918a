//! What a worker tells its application's health endpoint.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU8, Ordering};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Created, not running yet (or between runs).
    Idle,
    /// Claiming and running jobs.
    Running,
    /// Shutting down: no new claims, running jobs finishing or being returned.
    Stopping,
    /// Stopped by an error that retrying cannot fix (see [`crate::Worker::run`]).
    Failed,
}

/// A snapshot of a worker's health, for an application's health endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerHealth {
    /// The worker's name.
    pub name: String,
    /// Running, stopping, idle or failed.
    pub state: WorkerState,
    /// When a storage call of this worker (claim, completion, heartbeat) last succeeded.
    pub last_storage_contact: Option<DateTime<Utc>>,
    /// When a claim last returned at least one job.
    pub last_claim: Option<DateTime<Utc>>,
    /// Jobs claimed whose outcome is not written yet (running or buffered).
    pub jobs_in_flight: usize,
    /// Storage calls that failed in a row since the last success: above zero during an
    /// outage, while the worker backs off and retries.
    pub storage_failures: u32,
}

impl WorkerHealth {
    /// True when the worker runs and its last storage call succeeded: what a readiness
    /// probe wants.
    pub fn is_healthy(&self) -> bool {
        self.state == WorkerState::Running && self.storage_failures == 0
    }
}

/// The live counters behind [`WorkerHealth`], shared by a worker and its runs.
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    state: AtomicU8,
    /// Unix milliseconds; 0 for never.
    last_contact_ms: AtomicI64,
    last_claim_ms: AtomicI64,
    failures: AtomicU32,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const FAILED: u8 = 3;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn at(ms: i64) -> Option<DateTime<Utc>> {
    (ms != 0)
        .then(|| DateTime::from_timestamp_millis(ms))
        .flatten()
}

impl HealthState {
    pub(crate) fn set_state(&self, state: WorkerState) {
        let v = match state {
            WorkerState::Idle => IDLE,
            WorkerState::Running => RUNNING,
            WorkerState::Stopping => STOPPING,
            WorkerState::Failed => FAILED,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> WorkerState {
        match self.state.load(Ordering::Relaxed) {
            RUNNING => WorkerState::Running,
            STOPPING => WorkerState::Stopping,
            FAILED => WorkerState::Failed,
            _ => WorkerState::Idle,
        }
    }

    /// A storage call succeeded.
    pub(crate) fn contact(&self) {
        self.last_contact_ms.store(now_ms(), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A storage call failed.
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A claim returned jobs.
    pub(crate) fn claimed(&self) {
        let now = now_ms();
        self.last_claim_ms.store(now, Ordering::Relaxed);
        self.last_contact_ms.store(now, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, name: &str, jobs_in_flight: usize) -> WorkerHealth {
        WorkerHealth {
            name: name.to_string(),
            state: self.state(),
            last_storage_contact: at(self.last_contact_ms.load(Ordering::Relaxed)),
            last_claim: at(self.last_claim_ms.load(Ordering::Relaxed)),
            jobs_in_flight,
            storage_failures: self.failures.load(Ordering::Relaxed),
        }
    }
}
