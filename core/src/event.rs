//! The event stream: what workers did, for subscribers that want to watch.

use crate::job::JobId;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it misses some. Defaults to 4096.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// Something a worker did with a job.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// An attempt started.
    Started {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt number (1-based).
        attempt: i32,
    },
    /// The job completed; its result is stored.
    Completed {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt that completed it.
        attempt: i32,
        /// The handler's output.
        result: Value,
    },
    /// An attempt failed and the job will run again after `retry_in`.
    Retrying {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt that failed.
        attempt: i32,
        /// Why.
        error: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// Every job of a bundle finished.
    BundleFinished {
        /// The bundle.
        bundle_id: JobId,
        /// True when every member completed.
        succeeded: bool,
        /// Members completed.
        completed: usize,
        /// Members failed.
        failed: usize,
        /// Members cancelled.
        cancelled: usize,
    },
    /// The job failed for good.
    Failed {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The last attempt.
        attempt: i32,
        /// Why.
        error: String,
    },
    /// A running job's lease expired (its worker crashed, hung or lost its connection)
    /// and a lease sweep released it: it will run again, or failed when no attempts were
    /// left.
    LeaseReclaimed {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt whose lease expired.
        attempt: i32,
        /// True when no attempts were left and the job failed.
        failed: bool,
    },
    /// A prefetched job was dropped from the worker's local queue without starting: its
    /// lease was lost (another worker reclaimed the job, or it was cancelled) or had too
    /// little time left to start safely. Its handler did not run on this worker.
    LeaseDropped {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt the dropped lease belonged to.
        attempt: i32,
        /// Why, and what became of the job.
        reason: LeaseDropReason,
    },
    /// A workflow suspended to wait (sleep, signal, children) and gave up its slot.
    Suspended {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt that suspended.
        attempt: i32,
    },
    /// The job was cancelled: by [`crate::Queue::cancel`], or seen cancelled by the worker
    /// running it.
    Cancelled {
        /// The job.
        job_id: JobId,
    },
    /// A schedule's tick enqueued a job.
    ScheduleFired {
        /// The schedule.
        schedule: String,
        /// The job the tick created.
        job_id: JobId,
    },
    /// The handler snoozed: the job runs again after `delay` without spending the
    /// attempt.
    Snoozed {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt that snoozed (the next run has the same number).
        attempt: i32,
        /// How long until it runs again.
        delay: Duration,
    },
    /// A running handler reported its progress ([`crate::JobContext::progress`]).
    Progress {
        /// The job.
        job_id: JobId,
        /// Its task.
        task: String,
        /// The attempt that reported it.
        attempt: i32,
        /// The progress value, as stored on the job.
        progress: Value,
    },
    /// A replayed call met a checkpoint recorded with other arguments (see
    /// [`crate::Error::ArgumentsChanged`]). Sent in both [`crate::Determinism`] modes;
    /// under `Warn` the call then returns the stored result.
    NonDeterminism {
        /// The job being replayed.
        job_id: JobId,
        /// The checkpoint key.
        key: String,
        /// The called task.
        name: String,
        /// What differed.
        message: String,
    },
    /// A retention batch deleted finished jobs (roots and their descendants), counted by
    /// final status.
    JobsPurged {
        /// Completed jobs deleted.
        completed: u64,
        /// Failed jobs deleted.
        failed: u64,
        /// Cancelled jobs deleted.
        cancelled: u64,
    },
    /// A worker started serving its queues.
    WorkerStarted {
        /// The worker's name.
        worker: String,
    },
    /// A worker stopped.
    WorkerStopped {
        /// The worker's name.
        worker: String,
    },
}

impl Event {
    /// The job the event is about; `None` for worker and retention events.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Event::Started { job_id, .. }
            | Event::Completed { job_id, .. }
            | Event::Retrying { job_id, .. }
            | Event::Failed { job_id, .. }
            | Event::LeaseReclaimed { job_id, .. }
            | Event::LeaseDropped { job_id, .. }
            | Event::Suspended { job_id, .. }
            | Event::Snoozed { job_id, .. }
            | Event::Progress { job_id, .. }
            | Event::NonDeterminism { job_id, .. }
            | Event::Cancelled { job_id }
            | Event::ScheduleFired { job_id, .. } => Some(*job_id),
            Event::BundleFinished { bundle_id, .. } => Some(*bundle_id),
            Event::WorkerStarted { .. }
            | Event::WorkerStopped { .. }
            | Event::JobsPurged { .. } => None,
        }
    }
}

/// Why a prefetched job was dropped unstarted ([`Event::LeaseDropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseDropReason {
    /// The lease was no longer current: another worker holds the job, or it was
    /// cancelled. Nothing was written; the job belongs to whoever holds it now.
    Lost,
    /// The lease had too little time left on the worker's clock to start the job safely
    /// (its renewals had failed or stalled). The job was released, its attempt unspent,
    /// and runs again on the next claim.
    TooShort,
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventStreamError {
    /// The subscriber fell behind and this many events were dropped for it; the next
    /// `recv` continues with the oldest event still kept.
    #[error("missed {0} events: the subscriber fell behind")]
    Missed(u64),
    /// The queue was dropped; no more events will come.
    #[error("event stream closed")]
    Closed,
}

/// A subscription to a queue's events. A slow subscriber is told how many events it
/// missed rather than silently losing them.
#[derive(Debug)]
pub struct EventStream(pub(crate) broadcast::Receiver<Event>);

impl EventStream {
    /// The next event.
    ///
    /// # Errors
    /// [`EventStreamError::Missed`] after falling behind, [`EventStreamError::Closed`]
    /// once the queue is gone.
    pub async fn recv(&mut self) -> Result<Event, EventStreamError> {
        self.0.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventStreamError::Missed(n),
            broadcast::error::RecvError::Closed => EventStreamError::Closed,
        })
    }

    /// Waits for the first event matching `pred`, skipping others (and missed-event
    /// notices). Returns `None` once the stream closes.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&Event) -> bool) -> Option<Event> {
        loop {
            match self.recv().await {
                Ok(e) if pred(&e) => return Some(e),
                Ok(_) | Err(EventStreamError::Missed(_)) => {}
                Err(EventStreamError::Closed) => return None,
            }
        }
    }
}
