//! durable-jobs: background jobs and durable workflows on PostgreSQL, SQLite or memory.

pub mod clock;
pub mod error;
pub mod job;
pub mod options;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use job::{
    Checkpoint, CheckpointOutcome, Enqueued, Job, JobId, JobStatus, Lease, LeaseInfo, NewJob,
};
pub use options::JobOptions;
pub use storage::{
    Capabilities, ClaimedJob, Completion, DequeueParams, DynStorage, Failure, JobFilter,
    QueueCount, Storage,
};
