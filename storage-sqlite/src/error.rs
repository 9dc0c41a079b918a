//! Mapping SQLite errors to [`durable_jobs::Error`]: each becomes an [`Error::Storage`]
//! whose [`StorageErrorKind`] says whether retrying can help, whose message says what to
//! do about it, and whose source is the driver's own error.
//!
//! | SQLite reports | kind |
//! | --- | --- |
//! | `SQLITE_BUSY`, `SQLITE_LOCKED`, `SQLITE_PROTOCOL` | [`StorageErrorKind::Busy`] |
//! | `SQLITE_CORRUPT`, `SQLITE_NOTADB`, a stored value that does not decode (bad JSON, an unknown status, a time out of range) | [`StorageErrorKind::Corrupt`] |
//! | `SQLITE_CONSTRAINT` | [`StorageErrorKind::Constraint`] |
//! | `SQLITE_CANTOPEN`, `SQLITE_IOERR`, `SQLITE_READONLY`, `SQLITE_PERM` | [`StorageErrorKind::Unavailable`] |
//! | `SQLITE_FULL`, `SQLITE_NOMEM` | [`StorageErrorKind::Exhausted`] |
//! | `no such table` (the file was never migrated) | [`StorageErrorKind::Schema`] |
//! | anything else | [`StorageErrorKind::Other`] |
//!
//! A file written by a newer library is refused earlier, with [`Error::SchemaTooNew`].

use durable_jobs::job::UnknownStatus;
use durable_jobs::{Error, StorageError, StorageErrorKind};
use rusqlite::ErrorCode;

/// SQLite's primary error code, wherever rusqlite put it (a failed prepare reports it
/// as [`rusqlite::Error::SqlInputError`]).
fn code(err: &rusqlite::Error) -> Option<ErrorCode> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
        rusqlite::Error::SqlInputError { error, .. } => Some(error.code),
        _ => None,
    }
}

/// True when SQLite reports that another connection holds the lock we need
/// (`SQLITE_BUSY`, or `SQLITE_LOCKED` on a shared connection): the caller should retry.
pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        code(err),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The kind of a SQLite error, with a message that says what to do about it.
pub(crate) fn classify(err: &rusqlite::Error) -> (StorageErrorKind, String) {
    use StorageErrorKind as K;
    match code(err) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => (
            K::Busy,
            format!("sqlite: the database is locked by another connection ({err}); try again"),
        ),
        Some(ErrorCode::FileLockingProtocolFailed) => (
            K::Busy,
            format!("sqlite: lost a race for the file's locks ({err}); try again"),
        ),
        Some(ErrorCode::NotADatabase) => (
            K::Corrupt,
            format!(
                "the file is not a SQLite database or is encrypted ({err}); \
                 point durable-jobs at a new path or a SQLite file"
            ),
        ),
        Some(ErrorCode::DatabaseCorrupt) => (
            K::Corrupt,
            format!("the SQLite database is corrupt ({err}); restore it from a backup"),
        ),
        Some(ErrorCode::ConstraintViolation) => (
            K::Constraint,
            format!("sqlite: a write broke a constraint ({err})"),
        ),
        Some(ErrorCode::CannotOpen) => (
            K::Unavailable,
            format!(
                "cannot open the SQLite database ({err}); \
                 check that the directory exists and is writable"
            ),
        ),
        Some(ErrorCode::SystemIoFailure) => (
            K::Unavailable,
            format!("sqlite: an I/O error on the database file ({err}); check the disk"),
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => (
            K::Unavailable,
            format!("the SQLite database is read-only ({err}); check file permissions"),
        ),
        Some(ErrorCode::DiskFull) => (K::Exhausted, format!("the disk is full ({err})")),
        Some(ErrorCode::OutOfMemory) => (K::Exhausted, format!("sqlite ran out of memory ({err})")),
        _ if err.to_string().contains("no such table") => (
            K::Schema,
            format!(
                "sqlite: {err}: the durable-jobs tables are missing from this database; \
                 call migrate() on the storage (SqliteStorage::open does) before using it"
            ),
        ),
        _ => match err {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => (
                K::Corrupt,
                format!(
                    "sqlite: a stored value does not decode ({err}); \
                     the file may have been changed by another tool"
                ),
            ),
            _ => (K::Other, format!("sqlite: {err}")),
        },
    }
}

/// Converts a SQLite error into a storage error of its kind, keeping it as the source.
pub(crate) fn storage(err: rusqlite::Error) -> Error {
    let (kind, message) = classify(&err);
    StorageError::new(kind, message).with_source(err).into()
}

/// Like [`storage`], with the message prefixed by `context` (say, the file's path).
pub(crate) fn storage_in(context: impl std::fmt::Display, err: rusqlite::Error) -> Error {
    let (kind, message) = classify(&err);
    StorageError::new(kind, format!("{context}: {message}"))
        .with_source(err)
        .into()
}

/// A storage error of `kind` with no driver error behind it.
pub(crate) fn error(kind: StorageErrorKind, message: impl Into<String>) -> Error {
    StorageError::new(kind, message).into()
}

/// Stored data this version cannot read (a time out of range, an unparsable cursor).
pub(crate) fn corrupt(message: impl Into<String>) -> Error {
    error(StorageErrorKind::Corrupt, message)
}

/// A stored JSON value that no longer parses.
pub(crate) fn bad_json(column: &str, err: serde_json::Error) -> Error {
    StorageError::new(
        StorageErrorKind::Corrupt,
        format!("sqlite: column `{column}` holds invalid JSON: {err}"),
    )
    .with_source(err)
    .into()
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

/// A stored status this version does not know: [`StorageErrorKind::Corrupt`].
impl From<UnknownStatus> for QueryError {
    fn from(e: UnknownStatus) -> Self {
        QueryError::Other(e.into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_codes_map_to_kinds() {
        use StorageErrorKind as K;
        for (code, kind) in [
            (ffi::SQLITE_BUSY, K::Busy),
            (ffi::SQLITE_LOCKED, K::Busy),
            (ffi::SQLITE_PROTOCOL, K::Busy),
            (ffi::SQLITE_CORRUPT, K::Corrupt),
            (ffi::SQLITE_NOTADB, K::Corrupt),
            (ffi::SQLITE_CONSTRAINT, K::Constraint),
            (ffi::SQLITE_CONSTRAINT_UNIQUE, K::Constraint),
            (ffi::SQLITE_CANTOPEN, K::Unavailable),
            (ffi::SQLITE_IOERR, K::Unavailable),
            (ffi::SQLITE_IOERR_FSYNC, K::Unavailable),
            (ffi::SQLITE_READONLY, K::Unavailable),
            (ffi::SQLITE_FULL, K::Exhausted),
            (ffi::SQLITE_NOMEM, K::Exhausted),
            (ffi::SQLITE_MISUSE, K::Other),
        ] {
            let e = storage(failure(code));
            assert_eq!(e.storage_kind(), Some(kind), "code {code}: {e}");
            let source = std::error::Error::source(&e)
                .and_then(std::error::Error::source)
                .expect("the driver error is kept");
            assert!(source.downcast_ref::<rusqlite::Error>().is_some());
        }
        assert!(storage(failure(ffi::SQLITE_BUSY)).is_transient());
        assert!(!storage(failure(ffi::SQLITE_CORRUPT)).is_transient());
    }

    #[test]
    fn a_missing_table_asks_for_migrate() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let err = conn
            .prepare("SELECT id FROM durable_jobs")
            .expect_err("no tables yet");
        let e = storage(err);
        assert_eq!(e.storage_kind(), Some(StorageErrorKind::Schema), "{e}");
        assert!(e.to_string().contains("migrate()"), "{e}");
    }

    #[test]
    fn undecodable_values_are_corrupt() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let err = conn
            .query_row("SELECT 'text'", [], |r| r.get::<_, i64>(0))
            .expect_err("text is no integer");
        assert_eq!(storage(err).storage_kind(), Some(StorageErrorKind::Corrupt));
        let json = serde_json::from_str::<serde_json::Value>("{").expect_err("bad json");
        assert_eq!(
            bad_json("payload", json).storage_kind(),
            Some(StorageErrorKind::Corrupt)
        );
        let status: Error = QueryError::from(UnknownStatus("bogus".into())).into();
        assert_eq!(status.storage_kind(), Some(StorageErrorKind::Corrupt));
    }
}
