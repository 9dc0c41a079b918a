//! The CLI's errors and the exit code each one gives.

use durable_jobs::{Error, StorageErrorKind};

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the thing asked for is not there, the action is refused, or the
/// database failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad usage: a malformed argument, URL, duration or JSON document.
pub const EXIT_USAGE: u8 = 2;

/// What went wrong, in words that say what to fix. Printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A job, schedule or file that does not exist: exit 1.
    #[error("{0}")]
    NotFound(String),
    /// The action is not allowed in the thing's current state: exit 1.
    #[error("{0}")]
    Refused(String),
    /// The database has no durable-jobs schema, or an older one: exit 1.
    #[error("{0}")]
    NotMigrated(String),
    /// The database failed or could not be reached: exit 1.
    #[error("{0}")]
    Failed(String),
    /// Some items of a multi-item command failed; each was already reported: exit 1.
    #[error("{failed} of {total} failed")]
    Partial {
        /// How many items failed.
        failed: usize,
        /// How many were asked for.
        total: usize,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }

    /// True when the error was already printed item by item.
    pub fn already_reported(&self) -> bool {
        matches!(self, CliError::Partial { .. })
    }

    /// The error for a database that needs `durable-jobs migrate`.
    pub fn not_migrated(what: &str) -> Self {
        CliError::NotMigrated(format!(
            "{what}: run `durable-jobs migrate` with the same --database (and --schema) first"
        ))
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidOption { .. }
            | Error::InvalidQueueName(_)
            | Error::PayloadTooLarge { .. }
            | Error::Serialization(_) => CliError::Usage(e.to_string()),
            Error::JobNotFound(_) => CliError::NotFound(e.to_string()),
            Error::InvalidState { .. } | Error::JobFinished { .. } => {
                CliError::Refused(e.to_string())
            }
            Error::SchemaTooNew { found, supported } => CliError::Failed(format!(
                "the database schema is at version {found}, newer than this CLI's {supported}: \
                 upgrade durable-jobs-cli"
            )),
            Error::Storage(s) if s.kind() == StorageErrorKind::Schema => {
                CliError::not_migrated(&format!(
                    "the durable-jobs tables are missing or out of date ({})",
                    s.message()
                ))
            }
            _ => CliError::Failed(e.to_string()),
        }
    }
}
