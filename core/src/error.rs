//! The crate's error types: [`Error`] for every public call, and [`StorageError`] for what
//! a backend reports, with a [`StorageErrorKind`] that says whether retrying can help.

use crate::job::{JobId, UnknownStatus};
use std::fmt;

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
    /// A storage backend failed (connection, I/O, SQL, undecodable data). Its
    /// [`StorageError::kind`] tells whether retrying can help; the worker loop retries the
    /// transient kinds with a growing backoff.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// JSON (de)serialization failed outside a payload.
    #[error("serialization error: {0}")]
    Serialization(#[from] serde_json::Error),
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

    // ----- Awaiting results and call arguments (issue 15) -----
    /// A job waited for with [`crate::Queue::wait_for`] failed for good; `error` is its
    /// last error.
    #[error("job {job_id} failed: {error}")]
    JobFailed {
        /// The job.
        job_id: JobId,
        /// Its last error (empty when none was recorded).
        error: String,
    },
    /// A job waited for with [`crate::Queue::wait_for`] was cancelled; `error` is the
    /// last error of an attempt before it, if any.
    #[error("job {job_id} was cancelled{}", .error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    JobCancelled {
        /// The job.
        job_id: JobId,
        /// The last attempt's error, if one failed before the cancellation.
        error: Option<String>,
    },
    /// [`crate::Queue::wait_for`] gave up: the job had not finished within the timeout.
    /// The job itself is untouched and may still finish.
    #[error("job {job_id} did not finish within {timeout:?}")]
    WaitTimeout {
        /// The job.
        job_id: JobId,
        /// How long the caller waited.
        timeout: std::time::Duration,
    },
    /// A completed job's stored result does not deserialize into the type asked for.
    #[error("the result of job {job_id} does not fit the expected type: {message}")]
    InvalidResult {
        /// The job.
        job_id: JobId,
        /// The serde error message.
        message: String,
    },
    /// A replayed call found a checkpoint recorded by the same task with other
    /// arguments: the workflow's code or inputs changed under it. Reported under
    /// [`crate::Determinism::Strict`] (the default); [`crate::Determinism::Warn`] logs it,
    /// sends [`crate::Event::NonDeterminism`] and returns the stored result.
    #[error("non-determinism in job {job_id} at checkpoint `{key}`: `{name}` was recorded with arguments hashed {recorded} but is now called with arguments hashed {found}")]
    ArgumentsChanged {
        /// The job being replayed.
        job_id: JobId,
        /// The checkpoint key where the mismatch happened.
        key: String,
        /// The called task.
        name: String,
        /// The hash of the arguments stored with the checkpoint.
        recorded: String,
        /// The hash of the arguments given on replay.
        found: String,
    },
}

impl Error {
    /// Wraps any backend error as [`Error::Storage`] of kind [`StorageErrorKind::Other`].
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Error::Storage(StorageError::new(StorageErrorKind::Other, err.to_string()))
    }

    /// The storage error's kind, for [`Error::Storage`]; `None` for every other variant.
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Error::Storage(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// True when no retry can fix this error and an operator must act: a schema that was
    /// never migrated ([`StorageErrorKind::Schema`]) or one newer than this library
    /// ([`Error::SchemaTooNew`]). A worker stops on these instead of retrying forever.
    pub fn needs_operator(&self) -> bool {
        matches!(self, Error::SchemaTooNew { .. })
            || self.storage_kind() == Some(StorageErrorKind::Schema)
    }

    /// True when trying the same call again later may succeed: a storage error of a
    /// transient kind ([`StorageErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.storage_kind()
            .is_some_and(StorageErrorKind::is_transient)
    }

    /// True for [`Error::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Error::LeaseLost { .. })
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<UnknownStatus> for Error {
    fn from(e: UnknownStatus) -> Self {
        Error::Storage(StorageError::new(StorageErrorKind::Corrupt, e.to_string()))
    }
}

/// What kind of failure a backend reported: the part of a storage error a caller can act
/// on without reading its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The backend could not be reached or did not answer in time: a refused or dropped
    /// connection, a pool timeout, a server shutting down, a file that cannot be opened.
    /// Transient: retry with a backoff.
    Unavailable,
    /// Another writer holds what the call needed, or a transaction lost a serialization
    /// race (SQLite busy or locked, PostgreSQL deadlock or serialization failure).
    /// Transient: retry.
    Busy,
    /// The backend ran out of a resource it needs: disk, memory, connections on the
    /// server. Transient once an operator frees it; retried with a backoff.
    Exhausted,
    /// Stored data cannot be read: a corrupt file, a row that does not decode, JSON that
    /// does not parse. Retrying the same call gives the same error.
    Corrupt,
    /// A write broke a constraint (a unique key, a check). Retrying gives the same error.
    Constraint,
    /// The backend's schema is missing or was never migrated: call `migrate()`.
    Schema,
    /// Anything else: a SQL error, a protocol error, a bug. Not retried blindly.
    Other,
}

impl StorageErrorKind {
    /// True for the kinds that retrying later can fix: unavailable, busy and exhausted.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            StorageErrorKind::Unavailable | StorageErrorKind::Busy | StorageErrorKind::Exhausted
        )
    }

    /// The kind's stable name, used as a metric label (`unavailable`, `busy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Busy => "busy",
            StorageErrorKind::Exhausted => "exhausted",
            StorageErrorKind::Corrupt => "corrupt",
            StorageErrorKind::Constraint => "constraint",
            StorageErrorKind::Schema => "schema",
            StorageErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a storage backend reported: its kind, a message that says what to do, and the
/// driver's error as its source.
#[derive(Debug)]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StorageError {
    /// An error of `kind` with `message` and no source.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping `source` (the driver's error) for
    /// [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
