//! Maps sqlx errors to [`durable_jobs::Error`]: a [`StorageErrorKind`] that says whether a
//! retry can help, a message that says what to do, and the sqlx error kept as the source.

use durable_jobs::{Error, StorageError, StorageErrorKind};

/// The hint added to errors that mean the library's tables or functions are missing.
const MIGRATE_HINT: &str = " (the durable-jobs schema is missing or out of date: call migrate())";

/// Wraps a sqlx error as [`Error::Storage`] with its kind, adding a hint for the common
/// causes and keeping the sqlx error as the source.
pub(crate) fn db(err: sqlx::Error) -> Error {
    let (kind, message) = describe(&err);
    Error::Storage(StorageError::new(kind, message).with_source(err))
}

/// As [`db`], with `context` (what was being done) before the message and `hint` after
/// it; the kind and the source are kept.
pub(crate) fn db_context(context: &str, err: sqlx::Error, hint: &str) -> Error {
    let (kind, message) = describe(&err);
    Error::Storage(StorageError::new(kind, format!("{context}: {message}{hint}")).with_source(err))
}

/// A failure this crate detects itself (not reported by sqlx), of `kind`.
pub(crate) fn storage(kind: StorageErrorKind, message: impl Into<String>) -> Error {
    Error::Storage(StorageError::new(kind, message))
}

/// The kind and the message for a sqlx error.
fn describe(err: &sqlx::Error) -> (StorageErrorKind, String) {
    use StorageErrorKind as K;
    match err {
        sqlx::Error::PoolTimedOut => (
            K::Unavailable,
            "timed out waiting for a PostgreSQL connection: every pool connection is busy or \
             the server is unreachable (raise max_connections or acquire_timeout, or check \
             the server)"
                .into(),
        ),
        sqlx::Error::PoolClosed => (
            K::Unavailable,
            "the PostgreSQL connection pool was closed".into(),
        ),
        sqlx::Error::Database(e) => {
            let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
            let kind = kind_of_sqlstate(&code);
            let hint = if kind == K::Schema { MIGRATE_HINT } else { "" };
            (
                kind,
                format!("PostgreSQL error {code}: {}{hint}", e.message()),
            )
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            (K::Unavailable, format!("PostgreSQL: {err}"))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => (
            K::Corrupt,
            format!("PostgreSQL: a stored value does not decode: {err}"),
        ),
        _ => (K::Other, format!("PostgreSQL: {err}")),
    }
}

/// The kind of a PostgreSQL error by its SQLSTATE (see the PostgreSQL manual's
/// "PostgreSQL Error Codes").
pub(crate) fn kind_of_sqlstate(code: &str) -> StorageErrorKind {
    use StorageErrorKind as K;
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout:
        // the server is going away or not ready yet.
        "57P01" | "57P02" | "57P03" | "57P05" => K::Unavailable,
        // serialization_failure, deadlock_detected, lock_not_available.
        "40001" | "40P01" | "55P03" => K::Busy,
        // undefined_table, undefined_function, invalid_schema_name, undefined_column (a
        // schema migrated by an older version): never migrated, or not since an upgrade.
        "42P01" | "42883" | "3F000" | "42703" => K::Schema,
        // Values that do not parse: invalid text or binary representation, untranslatable
        // character, character not in repertoire, invalid datetime format; and
        // data_corrupted, index_corrupted.
        "22P02" | "22P03" | "22P05" | "22021" | "22007" | "XX001" | "XX002" => K::Corrupt,
        _ => match code.get(..2) {
            // connection_exception and its subclasses.
            Some("08") => K::Unavailable,
            // insufficient_resources: disk full, out of memory, too many connections.
            Some("53") => K::Exhausted,
            // integrity_constraint_violation: unique, foreign key, not null, check.
            Some("23") => K::Constraint,
            // SQL/JSON errors (22030 to 22039): JSON that does not parse or fit.
            Some("22") if code.starts_with("2203") => K::Corrupt,
            _ => K::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        use StorageErrorKind as K;
        for (code, kind) in [
            ("08006", K::Unavailable),
            ("08001", K::Unavailable),
            ("57P01", K::Unavailable),
            ("57P02", K::Unavailable),
            ("57P03", K::Unavailable),
            ("40001", K::Busy),
            ("40P01", K::Busy),
            ("55P03", K::Busy),
            ("53300", K::Exhausted),
            ("53100", K::Exhausted),
            ("53200", K::Exhausted),
            ("23505", K::Constraint),
            ("23503", K::Constraint),
            ("22P02", K::Corrupt),
            ("22P05", K::Corrupt),
            ("22032", K::Corrupt),
            ("22023", K::Other),
            ("XX001", K::Corrupt),
            ("42P01", K::Schema),
            ("42883", K::Schema),
            ("3F000", K::Schema),
            ("42703", K::Schema),
            ("42601", K::Other),
            ("57014", K::Other),
            ("", K::Other),
        ] {
            assert_eq!(kind_of_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn client_side_errors_map_to_kinds_and_keep_their_source() {
        use StorageErrorKind as K;
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for (err, kind) in [
            (sqlx::Error::PoolTimedOut, K::Unavailable),
            (sqlx::Error::PoolClosed, K::Unavailable),
            (sqlx::Error::WorkerCrashed, K::Unavailable),
            (sqlx::Error::Io(refused), K::Unavailable),
            (sqlx::Error::Decode("bad".into()), K::Corrupt),
            (
                sqlx::Error::ColumnDecode {
                    index: "0".into(),
                    source: "bad".into(),
                },
                K::Corrupt,
            ),
            (sqlx::Error::RowNotFound, K::Other),
            (sqlx::Error::Protocol("odd".into()), K::Other),
        ] {
            let what = format!("{err:?}");
            match db(err) {
                Error::Storage(e) => {
                    assert_eq!(e.kind(), kind, "{what}");
                    let source = std::error::Error::source(&e).expect("source kept");
                    assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        match db_context("doing x", sqlx::Error::PoolClosed, " (try y)") {
            Error::Storage(e) => {
                assert_eq!(e.kind(), K::Unavailable);
                assert!(e.message().starts_with("doing x: "), "{}", e.message());
                assert!(e.message().ends_with(" (try y)"), "{}", e.message());
            }
            other => panic!("{other:?}"),
        }
    }
}
