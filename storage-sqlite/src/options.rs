//! Options for opening a SQLite storage.

use durable_jobs::{Clock, Error, ManualClock, Result, SystemClock};
use std::sync::Arc;
use std::time::Duration;

/// How long SQLite itself waits for another connection's lock before a statement returns
/// `SQLITE_BUSY`. Defaults to 5 seconds.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the backend keeps retrying a busy database (with backoff, on top of
/// [`DEFAULT_BUSY_TIMEOUT`]) before it reports [`Error::Storage`] of kind
/// [`durable_jobs::StorageErrorKind::Busy`]. Defaults to 60 seconds.
pub const DEFAULT_BUSY_RETRY_FOR: Duration = Duration::from_secs(60);
/// Read connections used alongside the write connection. Defaults to 4.
pub const DEFAULT_READ_CONNECTIONS: usize = 4;
/// The most queued write commands the writer thread coalesces into one transaction.
/// Defaults to 128.
pub const DEFAULT_MAX_WRITE_BATCH: usize = 128;
/// Prepared statements cached per connection. Defaults to 64.
pub const DEFAULT_STATEMENT_CACHE: usize = 64;
/// How often a file-backed storage checks whether another process committed to the file,
/// to wake its workers. Defaults to 50 milliseconds.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// SQLite's `synchronous` setting for the file's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=NORMAL`: in WAL mode a commit is atomic and consistent, and survives
    /// a process crash, but the last commits before a power loss or OS crash may roll
    /// back (the database is never corrupted). The default: the usual choice for WAL.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced and survives power loss, at a large
    /// cost in write throughput.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Options for [`crate::SqliteStorage::open_with`]. Setters never fail; opening validates.
///
/// ```
/// use durable_jobs_sqlite::SqliteOptions;
/// use std::time::Duration;
/// let opts = SqliteOptions::new().busy_timeout(Duration::from_secs(10)).read_connections(2);
/// ```
#[derive(Clone)]
pub struct SqliteOptions {
    pub(crate) busy_timeout: Duration,
    pub(crate) busy_retry_for: Duration,
    pub(crate) read_connections: usize,
    pub(crate) max_write_batch: usize,
    pub(crate) statement_cache: usize,
    pub(crate) watch_interval: Option<Duration>,
    pub(crate) synchronous: Synchronous,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) manual_clock: Option<ManualClock>,
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("busy_retry_for", &self.busy_retry_for)
            .field("read_connections", &self.read_connections)
            .field("max_write_batch", &self.max_write_batch)
            .field("statement_cache", &self.statement_cache)
            .field("watch_interval", &self.watch_interval)
            .field("synchronous", &self.synchronous)
            .field("manual_clock", &self.manual_clock.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteOptions {
    /// The defaults: the `DEFAULT_*` constants of this module and the system clock.
    pub fn new() -> Self {
        SqliteOptions {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            busy_retry_for: DEFAULT_BUSY_RETRY_FOR,
            read_connections: DEFAULT_READ_CONNECTIONS,
            max_write_batch: DEFAULT_MAX_WRITE_BATCH,
            statement_cache: DEFAULT_STATEMENT_CACHE,
            watch_interval: Some(DEFAULT_WATCH_INTERVAL),
            synchronous: Synchronous::default(),
            clock: Arc::new(SystemClock),
            manual_clock: None,
        }
    }

    /// How long SQLite waits on another connection's lock per try. Defaults to
    /// [`DEFAULT_BUSY_TIMEOUT`].
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How long the backend retries a busy database before giving up with
    /// [`Error::Storage`] of kind [`durable_jobs::StorageErrorKind::Busy`]. Defaults to
    /// [`DEFAULT_BUSY_RETRY_FOR`].
    pub fn busy_retry_for(mut self, limit: Duration) -> Self {
        self.busy_retry_for = limit;
        self
    }

    /// Read connections beside the writer, so reads go on during writes. Zero sends
    /// reads through the writer thread. Ignored in memory, where one connection holds
    /// the database. Defaults to [`DEFAULT_READ_CONNECTIONS`].
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }

    /// The most queued writes committed together in one transaction; at least 1.
    /// Defaults to [`DEFAULT_MAX_WRITE_BATCH`].
    pub fn max_write_batch(mut self, n: usize) -> Self {
        self.max_write_batch = n;
        self
    }

    /// Prepared statements cached per connection. Defaults to [`DEFAULT_STATEMENT_CACHE`].
    pub fn statement_cache(mut self, n: usize) -> Self {
        self.statement_cache = n;
        self
    }

    /// How often to check for commits by other processes (a cheap `PRAGMA data_version`
    /// read) and wake this process's workers; `None` leaves them to their poll interval.
    /// Ignored in memory. Defaults to [`DEFAULT_WATCH_INTERVAL`].
    pub fn watch_interval(mut self, every: Option<Duration>) -> Self {
        self.watch_interval = every;
        self
    }

    /// The `synchronous` pragma. Defaults to [`Synchronous::Normal`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Takes time from `clock` instead of the system clock. All processes sharing one
    /// file should use the same (system) clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.manual_clock = None;
        self
    }

    /// Takes time from a manual clock; moving it also wakes idle workers, so tests move
    /// time instead of sleeping.
    pub fn manual_clock(mut self, clock: ManualClock) -> Self {
        self.clock = Arc::new(clock.clone());
        self.manual_clock = Some(clock);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_write_batch == 0 {
            return Err(Error::InvalidOption {
                option: "max_write_batch",
                message: "expected at least 1, found 0".into(),
            });
        }
        if self.watch_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOption {
                option: "watch_interval",
                message: "expected a positive interval or None, found zero".into(),
            });
        }
        Ok(())
    }
}
