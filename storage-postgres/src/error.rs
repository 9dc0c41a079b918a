//! Maps sqlx errors to [`durable_jobs::Error`] with messages that say what to do.

use durable_jobs::Error;

/// Wraps a sqlx error as [`Error::Storage`], adding a hint for the common causes.
pub(crate) fn db(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::PoolTimedOut => Error::Storage(
            "timed out waiting for a PostgreSQL connection: every pool connection is busy or \
             the server is unreachable (raise max_connections or acquire_timeout, or check \
             the server)"
                .into(),
        ),
        sqlx::Error::PoolClosed => {
            Error::Storage("the PostgreSQL connection pool was closed".into())
        }
        sqlx::Error::Database(e) => {
            let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
            let hint = match code.as_str() {
                // undefined_table / undefined_function / invalid_schema_name
                "42P01" | "42883" | "3F000" => {
                    " (the durable-jobs schema is missing or out of date: call migrate())"
                }
                _ => "",
            };
            Error::Storage(format!("PostgreSQL error {code}: {}{hint}", e.message()))
        }
        _ => Error::Storage(format!("PostgreSQL: {err}")),
    }
}
