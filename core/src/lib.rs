#![doc = include_str!("../../README.md")]

mod batching;
pub mod bundle;
pub mod clock;
pub mod error;
pub mod event;
mod hook;
pub mod idhash;
pub mod instrumented;
pub mod job;
mod maintenance;
pub mod manage;
pub mod metadata;
pub mod metric;
pub mod options;
pub mod queue;
pub mod result;
pub mod retry;
pub mod schedule;
pub mod storage;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod worker;
pub mod workflow;

pub use bundle::{BundleItem, BundleOptions, BundleStatus, BUNDLE_TASK};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result, StorageError, StorageErrorKind};
pub use event::{Event, EventStream, EventStreamError, LeaseDropReason};
pub use instrumented::{Backoff, InstrumentedStorage, StorageCall, StorageLayer};
pub use job::{
    Checkpoint, CheckpointOutcome, Enqueued, Job, JobId, JobStatus, KeyMode, Lease, LeaseInfo,
    NewJob,
};
pub use maintenance::retention::{
    RetentionPolicy, DEFAULT_KEEP_CANCELLED, DEFAULT_KEEP_COMPLETED, DEFAULT_KEEP_FAILED,
    DEFAULT_RETENTION_BATCH, DEFAULT_RETENTION_INTERVAL,
};
pub use manage::{JobDetails, WorkerInfo};
pub use metadata::Metadata;
pub use options::JobOptions;
pub use queue::{Queue, DEFAULT_MAX_SNOOZES};
pub use result::JobHandle;
pub use retry::RetryPolicy;
pub use schedule::{CatchUp, Schedule, ScheduleInfo, ScheduleRecord, SchedulerReport};
pub use storage::{
    AdvanceScheduleParams, AttemptOutcome, AttemptRecord, Capabilities, CheckpointWrite,
    ClaimedJob, Completion, DeletedBatch, DequeueParams, DynStorage, Failure, JobFilter,
    ManualOutcome, QueueCount, RateLimit, ReleasedJob, RetentionBatch, RetentionPurged,
    SpawnChildrenParams, StaleLocks, Storage, TakeSignalsParams, WorkerQueue, WorkerRecord,
};
pub use task::{NoRetry, RetryAfter, Snooze, Task, TaskError, TaskErrorKind};
pub use trace::TraceContext;
pub use worker::{
    QueueConfig, ShutdownHandle, Worker, WorkerHealth, WorkerOptions, WorkerReport, WorkerState,
};
pub use workflow::{
    call, CheckpointKey, ChildResult, Determinism, FanOut, JobContext, TransactionalStep,
};
