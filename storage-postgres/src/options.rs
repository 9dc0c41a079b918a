//! Options for [`crate::PostgresStorage`]: the schema it lives in and its connection pool.

use durable_jobs::{Error, Result};
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;
use std::time::Duration;

/// The schema that holds the library's tables when none is set.
pub const DEFAULT_SCHEMA: &str = "durable_jobs";
/// Pool connections opened by [`crate::PostgresStorage::connect_with`]. Defaults to 10.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a call waits for a free pool connection before it fails. Defaults to 30 s.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pool connection may sit idle before it is checked (one round trip) on its
/// way out of the pool. Defaults to 5 s.
pub const DEFAULT_PING_IDLE_AFTER: Duration = Duration::from_secs(5);
/// The longest schema name accepted. The NOTIFY channel is `durable_jobs:<schema>` and
/// PostgreSQL channel names must stay under 64 bytes.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Options for a [`crate::PostgresStorage`]. Setters never fail; the storage's
/// constructors validate the options once and return [`Error::InvalidOption`].
///
/// ```
/// use durable_jobs_postgres::PostgresOptions;
/// let opts = PostgresOptions::new().schema("jobs").max_connections(20);
/// assert!(opts.validate().is_ok());
/// assert!(PostgresOptions::new().schema("bad-name; drop").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    pub(crate) schema: String,
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) ping_idle_after: Duration,
    pub(crate) listen: bool,
    pub(crate) pgbouncer: bool,
    pub(crate) direct_url: Option<String>,
    pub(crate) vacuum_after_purge: bool,
    #[cfg(feature = "testing")]
    pub(crate) test_clock: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PostgresOptions {
    /// Default options: schema [`DEFAULT_SCHEMA`], [`DEFAULT_MAX_CONNECTIONS`] connections,
    /// LISTEN/NOTIFY wake-ups on.
    pub fn new() -> Self {
        PostgresOptions {
            schema: DEFAULT_SCHEMA.to_string(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            ping_idle_after: DEFAULT_PING_IDLE_AFTER,
            listen: true,
            pgbouncer: false,
            direct_url: None,
            vacuum_after_purge: true,
            #[cfg(feature = "testing")]
            test_clock: false,
        }
    }

    /// Reads time as `now()` plus an offset that tests move forward
    /// ([`crate::testing::TestSchema::advance`]) instead of sleeping. The offset lives
    /// in the schema's `test_clock` table, which the test harness creates. Feature
    /// `testing` only; production SQL always reads `now()`. Defaults to `false`.
    #[cfg(feature = "testing")]
    pub fn test_clock(mut self, on: bool) -> Self {
        self.test_clock = on;
        self
    }

    /// The schema for the library's tables, functions and migrations table: 1 to
    /// [`MAX_SCHEMA_LEN`] characters from `A-Z a-z 0-9 _`, not starting with a digit or
    /// `pg_`. It is always quoted, so case is kept. Defaults to [`DEFAULT_SCHEMA`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most pool connections [`crate::PostgresStorage::connect_with`] opens (at least
    /// 1; ignored by `from_pool`, whose pool you sized). Defaults to
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long a call waits for a pool connection (ignored by `from_pool`). Defaults to
    /// [`DEFAULT_ACQUIRE_TIMEOUT`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a pool connection may sit idle before it is checked with a ping on its
    /// way out of the pool (ignored by `from_pool`, whose pool you configured). A
    /// connection the server or a firewall dropped while idle is then replaced instead of
    /// failing its next statement. Busier connections skip the check: a ping before every
    /// statement (sqlx's default) made every claim, completion and enqueue two round trips.
    /// `Duration::ZERO` checks every time. Defaults to [`DEFAULT_PING_IDLE_AFTER`].
    pub fn ping_idle_after(mut self, idle: Duration) -> Self {
        self.ping_idle_after = idle;
        self
    }

    /// Whether [`durable_jobs::Storage::wakeups`] opens a LISTEN connection so workers
    /// wake as soon as a job is enqueued by any process. With `false`, workers poll.
    /// Defaults to `true`.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Runs behind a connection pooler in transaction mode (pgBouncer's
    /// `pool_mode = transaction`, as most hosted PostgreSQL offers), where each
    /// transaction may run on another server connection and nothing outlives it:
    ///
    /// - every statement runs without a named prepared statement (parsed afresh each
    ///   time, so sqlx's statement cache is not used) and inside a transaction, which
    ///   keeps one server connection for both of sqlx's exchanges with the server
    ///   (BEGIN, parse, execute, COMMIT: four round trips per statement where a cached
    ///   statement outside this mode takes one);
    /// - no session state is used: migrations lock with a transaction-level advisory
    ///   lock, settings are `SET LOCAL`, there are no temporary tables;
    /// - the connection does not send the `extra_float_digits` startup parameter, which
    ///   pgBouncer refuses unless told to ignore it;
    /// - LISTEN, which needs a session, goes to `direct_url` (the server itself, bypassing
    ///   the pooler, e.g. `postgres://app@db-primary:5432/app`); with `None`, workers in
    ///   other processes notice new jobs by polling (this process's own enqueues still
    ///   wake its workers at once).
    ///
    /// It applies to the pool [`crate::PostgresStorage::connect_with`] opens and to the
    /// statements the storage runs on a pool given to `from_pool_with` (configure that
    /// pool without `extra_float_digits` yourself). Statements of your own behind the
    /// pooler need the same care: `.persistent(false)` inside a transaction. Call
    /// [`crate::PostgresStorage::enqueue_in_tx`] inside a transaction too. Off by default.
    ///
    /// ```
    /// use durable_jobs_postgres::PostgresOptions;
    /// let behind_pgbouncer = PostgresOptions::new()
    ///     .pgbouncer_transaction_mode(Some("postgres://app@db-primary:5432/app"));
    /// assert!(behind_pgbouncer.validate().is_ok());
    /// let polling = PostgresOptions::new().pgbouncer_transaction_mode(None);
    /// assert!(polling.validate().is_ok());
    /// ```
    pub fn pgbouncer_transaction_mode(mut self, direct_url: Option<&str>) -> Self {
        self.pgbouncer = true;
        self.direct_url = direct_url.map(str::to_string);
        self
    }

    /// Whether the retention purge vacuums the tables it deleted from once a pass has
    /// deleted as many rows as autovacuum waits for (50 plus 5% of the `jobs` table, the
    /// table's own autovacuum settings), right as the pass ends.
    ///
    /// Why: PostgreSQL reuses the space of deleted rows only once a vacuum has recorded
    /// it. Autovacuum looks at a table once per `autovacuum_naptime` (a minute by
    /// default) and some servers run with it off, so without this the table grows with
    /// every new job until a vacuum comes round, and without autovacuum it grows for
    /// good. The vacuum is `VACUUM (SKIP_LOCKED, TRUNCATE false)`: it never waits for a
    /// running autovacuum or another process's vacuum, and takes no lock that stops
    /// claims, completions or enqueues (it leaves empty pages at the table's end in place
    /// rather than lock the table to cut them off). A vacuum that fails (a role that
    /// does not own the tables, a statement timeout) is logged and the purge goes on.
    /// Turn it off where an operator's own vacuum schedule handles the tables. Defaults
    /// to `true`.
    pub fn vacuum_after_purge(mut self, on: bool) -> Self {
        self.vacuum_after_purge = on;
        self
    }

    /// True when the storage runs behind a transaction-mode pooler
    /// ([`Self::pgbouncer_transaction_mode`]).
    pub fn is_pgbouncer_transaction_mode(&self) -> bool {
        self.pgbouncer
    }

    /// True when [`durable_jobs::Storage::wakeups`] opens a LISTEN connection: LISTEN is
    /// on and, behind a transaction-mode pooler, a direct URL was given.
    pub fn listens(&self) -> bool {
        self.listen && (!self.pgbouncer || self.direct_url.is_some())
    }

    #[cfg(feature = "testing")]
    pub(crate) fn uses_test_clock(&self) -> bool {
        self.test_clock
    }

    #[cfg(not(feature = "testing"))]
    pub(crate) fn uses_test_clock(&self) -> bool {
        false
    }

    /// The configured schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// Checks every option.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the option, what was expected and what was found.
    pub fn validate(&self) -> Result<()> {
        validate_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(Error::InvalidOption {
                option: "max_connections",
                message: "expected at least 1 connection, found 0".into(),
            });
        }
        if self.acquire_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "acquire_timeout",
                message: "expected a positive duration, found 0".into(),
            });
        }
        if let Some(url) = &self.direct_url {
            direct_connect_options(url)?;
        }
        Ok(())
    }
}

/// Checks a schema name. The name is quoted wherever it is used, so this is not what
/// keeps SQL safe; it keeps names predictable in `psql`, and short enough for the NOTIFY
/// channel.
///
/// # Errors
/// [`Error::InvalidOption`] for `schema`.
pub fn validate_schema(schema: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidOption {
            option: "schema",
            message: format!(
                "expected 1 to {MAX_SCHEMA_LEN} characters from A-Z a-z 0-9 _, not starting \
                 with a digit or `pg_`; found `{schema}` ({why})"
            ),
        })
    };
    if schema.is_empty() {
        return bad("empty");
    }
    if schema.len() > MAX_SCHEMA_LEN {
        return bad("too long");
    }
    if !schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return bad("a character outside the allowed set");
    }
    if schema.starts_with(|c: char| c.is_ascii_digit()) {
        return bad("starts with a digit");
    }
    if schema.to_ascii_lowercase().starts_with("pg_") {
        return bad("`pg_` is reserved by PostgreSQL");
    }
    Ok(())
}

/// The connect options of a direct URL (see
/// [`PostgresOptions::pgbouncer_transaction_mode`]).
///
/// # Errors
/// [`Error::InvalidOption`] for `direct_url` when it does not parse.
pub(crate) fn direct_connect_options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| Error::InvalidOption {
        option: "direct_url",
        message: format!("expected postgres://user@host:port/database, found an invalid URL: {e}"),
    })
}

/// `schema` quoted as an SQL identifier.
pub(crate) fn quote_ident(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// `s` quoted as an SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The NOTIFY channel for a schema.
pub(crate) fn channel(schema: &str) -> String {
    format!("durable_jobs:{schema}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["durable_jobs", "A1", "_x", &"a".repeat(MAX_SCHEMA_LEN)] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "pg_catalog",
            "a-b",
            "a\"b",
            "a b",
            "é",
            &"a".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            assert!(
                matches!(
                    validate_schema(bad),
                    Err(Error::InvalidOption {
                        option: "schema",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn options_validate() {
        assert!(PostgresOptions::new().validate().is_ok());
        assert!(PostgresOptions::new()
            .max_connections(0)
            .validate()
            .is_err());
        assert!(PostgresOptions::new()
            .acquire_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(matches!(
            PostgresOptions::new()
                .pgbouncer_transaction_mode(Some("not a url"))
                .validate(),
            Err(Error::InvalidOption {
                option: "direct_url",
                ..
            })
        ));
        let direct = PostgresOptions::new()
            .pgbouncer_transaction_mode(Some("postgres://postgres@127.0.0.1:5432/postgres"));
        assert!(direct.validate().is_ok() && direct.listens());
        assert!(!PostgresOptions::new()
            .pgbouncer_transaction_mode(None)
            .listens());
        assert!(PostgresOptions::new().listens());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
