//! Mapping SQLite errors to [`durable_jobs::Error`].

use durable_jobs::Error;
use rusqlite::ErrorCode;

/// True when SQLite reports that another connection holds the lock we need
/// (`SQLITE_BUSY`, or `SQLITE_LOCKED` on a shared connection): the caller should retry.
pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Converts a SQLite error into a storage error whose message says what to do about it.
pub(crate) fn storage(err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => Error::Storage(format!(
            "the file is not a SQLite database or is encrypted ({err}); \
             point durable-jobs at a new path or a SQLite file"
        )),
        Some(ErrorCode::DatabaseCorrupt) => Error::Storage(format!(
            "the SQLite database is corrupt ({err}); restore it from a backup"
        )),
        Some(ErrorCode::CannotOpen) => Error::Storage(format!(
            "cannot open the SQLite database ({err}); check that the directory exists and is writable"
        )),
        Some(ErrorCode::ReadOnly) => Error::Storage(format!(
            "the SQLite database is read-only ({err}); check file permissions"
        )),
        Some(ErrorCode::DiskFull) => Error::Storage(format!("the disk is full ({err})")),
        _ => Error::Storage(format!("sqlite: {err}")),
    }
}

/// A stored JSON value that no longer parses.
pub(crate) fn bad_json(column: &str, err: serde_json::Error) -> Error {
    Error::Storage(format!(
        "sqlite: column `{column}` holds invalid JSON: {err}"
    ))
}

/// An error inside a query function: SQLite's own (kept raw, so callers can tell a busy
/// database from other failures and retry it) or already a durable-jobs error.
#[derive(Debug)]
pub(crate) enum QueryError {
    Sqlite(rusqlite::Error),
    Other(Error),
}

/// The result of a query function.
pub(crate) type QResult<T> = std::result::Result<T, QueryError>;

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> Self {
        QueryError::Sqlite(e)
    }
}

impl From<Error> for QueryError {
    fn from(e: Error) -> Self {
        QueryError::Other(e)
    }
}

impl From<QueryError> for Error {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Sqlite(e) => storage(e),
            QueryError::Other(e) => e,
        }
    }
}
