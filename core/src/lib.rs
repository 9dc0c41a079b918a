#![doc = include_str!("../../README.md")]

pub mod bundle;
pub mod clock;
pub mod error;
pub mod event;
mod hook;
pub mod job;
mod maintenance;
pub mod manage;
pub mod options;
pub mod queue;
pub mod retry;
pub mod schedule;
pub mod storage;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;
pub mod workflow;

pub use bundle::{BundleItem, BundleOptions, BundleStatus, BUNDLE_TASK};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use event::{Event, EventStream, EventStreamError};
pub use job::{
    Checkpoint, CheckpointOutcome, Enqueued, Job, JobId, JobStatus, KeyMode, Lease, LeaseInfo,
    NewJob,
};
pub use manage::JobDetails;
pub use options::JobOptions;
pub use queue::Queue;
pub use retry::RetryPolicy;
pub use schedule::{CatchUp, Schedule, ScheduleInfo, ScheduleRecord, SchedulerReport};
pub use storage::{
    Capabilities, ClaimedJob, Completion, DequeueParams, DynStorage, Failure, JobFilter,
    ManualOutcome, QueueCount, Storage,
};
pub use task::{NoRetry, RetryAfter, Task, TaskError, TaskErrorKind};
pub use worker::{QueueConfig, ShutdownHandle, Worker, WorkerOptions, WorkerReport};
pub use workflow::{call, CheckpointKey, ChildResult, FanOut, JobContext};
