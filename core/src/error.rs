//! The crate's error type.

use crate::job::JobId;

/// Errors returned by durable-jobs' public calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A write was fenced: the lease it carried is no longer the job's current lease
    /// (the job was reclaimed, finished, cancelled or released). Nothing was changed.
    #[error("lease lost: job {job_id} is no longer held by this lease (it was reclaimed, finished or cancelled)")]
    LeaseLost {
        /// The job whose lease is gone.
        job_id: JobId,
    },
    /// No handler is registered under this task name.
    #[error("unknown task `{0}`: no handler is registered under that name")]
    UnknownTask(String),
    /// A payload could not be converted to or from the task's argument type.
    #[error("payload for task `{task}` does not fit its argument type: {message}")]
    InvalidPayload {
        /// The task name.
        task: String,
        /// The serde error message.
        message: String,
    },
    /// The serialized payload is larger than allowed.
    #[error("payload for task `{task}` is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The task name.
        task: String,
        /// The payload's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Options given to a call are out of range or contradict each other.
    #[error("invalid option `{option}`: {message}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What was expected and what was found.
        message: String,
    },
    /// A queue name is empty, too long, or has characters outside `[A-Za-z0-9_.:-]`.
    #[error("invalid queue name `{0}`: use 1 to 128 characters from A-Z a-z 0-9 _ . : -")]
    InvalidQueueName(String),
    /// A replayed workflow met a different call than the checkpoint recorded.
    #[error("non-determinism in job {job_id} at checkpoint `{key}`: the checkpoint recorded `{recorded}` but the code now calls `{found}`")]
    NonDeterminism {
        /// The job being replayed.
        job_id: JobId,
        /// The checkpoint key where the mismatch happened.
        key: String,
        /// The name stored in the checkpoint.
        recorded: String,
        /// The name the code asked for on replay.
        found: String,
    },
    /// No job has this id.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// The job is in a state that does not allow this operation.
    #[error("job {job_id} is {status}, which does not allow {operation}")]
    InvalidState {
        /// The job.
        job_id: JobId,
        /// Its current status.
        status: String,
        /// What was attempted.
        operation: &'static str,
    },
    /// The database was written by a newer version of the library.
    #[error("storage schema is at version {found}, newer than this library's {supported}: upgrade durable-jobs")]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this library knows.
        supported: i64,
    },
    /// A storage backend failed (connection, I/O, SQL). The worker loop retries these.
    #[error("storage error: {0}")]
    Storage(String),
    /// JSON (de)serialization failed outside a payload.
    #[error("serialization error: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The backend does not implement this operation (see [`crate::Storage::capabilities`]).
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// A signal was sent to a job that has already finished.
    #[error("job {job_id} has finished ({status}); it can no longer receive signals")]
    JobFinished {
        /// The job.
        job_id: JobId,
        /// Its final status.
        status: String,
    },
    /// The worker or queue was shut down.
    #[error("shut down")]
    Shutdown,
}

impl Error {
    /// Wraps any backend error as [`Error::Storage`].
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Error::Storage(err.to_string())
    }

    /// True for [`Error::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Error::LeaseLost { .. })
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
