//! Test support (feature `testing`): finds a PostgreSQL server by itself and gives each
//! test its own schema, dropped in teardown.
//!
//! The server is, in order: `DATABASE_URL` if set; else `postgres://postgres@127.0.0.1:5432/postgres`
//! if something listens there; else a throwaway cluster started with `initdb`/`pg_ctl`
//! in a temporary directory on a free port, stopped (and deleted) when the test process
//! exits, even by SIGKILL. With none of these, setup fails with a message naming what to
//! install; tests never skip. `DURABLE_JOBS_PG_THROWAWAY=1` forces the throwaway cluster.
//!
//! ```no_run
//! # async fn example() -> durable_jobs::Result<()> {
//! use durable_jobs::Storage;
//! let t = durable_jobs_postgres::testing::TestSchema::new().await?;
//! t.storage().enqueue(durable_jobs::NewJob::new("t", serde_json::json!(1))).await?;
//! t.drop_schema().await?;
//! # Ok(()) }
//! ```

use crate::error::db;
use crate::options::quote_ident;
use crate::storage::micros;
use crate::{PostgresOptions, PostgresStorage};
use async_trait::async_trait;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{
    DynStorage, Error, JobId, JobStatus, Result, Storage, StorageError, StorageErrorKind,
};
use sqlx::AssertSqlSafe;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod cluster;
mod pgbouncer;

pub use cluster::ThrowawayCluster;
pub use pgbouncer::{
    shared_pgbouncer, PgBouncer, PgBouncerHarness, PGBOUNCER_PACKAGE, SHARED_POOL_SIZE,
};

/// The URL tried when `DATABASE_URL` is unset.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server for tests (see the module docs), found once per process.
///
/// # Errors
/// [`Error::Storage`] naming what to install or set when no server can be found or
/// started.
pub fn server_url() -> Result<String> {
    static URL: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    URL.get_or_init(find_server)
        .clone()
        .map_err(|e| Error::Storage(StorageError::new(StorageErrorKind::Unavailable, e)))
}

/// Set to `1` to skip `DATABASE_URL` and 127.0.0.1:5432 and always start a throwaway
/// cluster (how the fallback itself is tested).
pub const THROWAWAY_ENV: &str = "DURABLE_JOBS_PG_THROWAWAY";

/// Starts the cluster this process's tests share when no server runs; it lives until
/// the process exits, when its watchdog stops it and deletes its files.
fn start_shared_cluster() -> std::result::Result<String, String> {
    static SHARED: OnceLock<ThrowawayCluster> = OnceLock::new();
    let cluster = ThrowawayCluster::start()?;
    let url = cluster.url().to_string();
    // Kept for the process's lifetime: dropping it would stop the server under the tests.
    let _ = SHARED.set(cluster);
    Ok(url)
}

fn find_server() -> std::result::Result<String, String> {
    if std::env::var(THROWAWAY_ENV).is_ok_and(|v| v == "1") {
        return start_shared_cluster().map_err(|e| {
            format!("{THROWAWAY_ENV}=1 but no throwaway cluster could be started: {e}")
        });
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Ok(url);
        }
    }
    let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if TcpStream::connect_timeout(&local, Duration::from_millis(500)).is_ok() {
        return Ok(LOCAL_URL.to_string());
    }
    start_shared_cluster().map_err(|e| {
        format!(
            "no PostgreSQL server for tests: DATABASE_URL is unset, nothing listens on \
             127.0.0.1:5432, and a throwaway cluster could not be started ({e}). Install \
             the PostgreSQL server binaries (Debian: `apt-get install postgresql`, which \
             provides initdb and pg_ctl; put them on PATH) or set DATABASE_URL."
        )
    })
}

/// A schema name unique across processes and runs: `<prefix>_<pid>_<n>_<nanos>`.
pub fn unique_schema(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A migrated storage in a fresh schema of its own.
#[derive(Debug)]
pub struct TestSchema {
    storage: PostgresStorage,
    url: String,
}

impl TestSchema {
    /// A fresh, migrated schema with a small pool.
    ///
    /// # Errors
    /// [`Error::Storage`] when no server is found or migrating fails.
    pub async fn new() -> Result<Self> {
        Self::with_options(PostgresOptions::new().max_connections(4)).await
    }

    /// A fresh, migrated schema; `options`' schema name is replaced by a unique one, and
    /// the storage runs on the schema's test clock (see [`Self::advance`]).
    ///
    /// # Errors
    /// As [`Self::new`].
    pub async fn with_options(options: PostgresOptions) -> Result<Self> {
        let url = server_url()?;
        let storage = PostgresStorage::connect_with(
            &url,
            options.schema(unique_schema("dj_test")).test_clock(true),
        )
        .await?;
        storage.migrate().await?;
        let q = quote_ident(storage.schema());
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE {q}.test_clock (offset_us bigint NOT NULL);
             INSERT INTO {q}.test_clock VALUES (0);
             CREATE FUNCTION {q}.test_now() RETURNS timestamptz LANGUAGE sql STABLE AS
                 $$ SELECT now() + (SELECT offset_us FROM {q}.test_clock) * interval '1 microsecond' $$;
             CREATE OR REPLACE FUNCTION {q}.clock_now() RETURNS timestamptz LANGUAGE sql STABLE AS
                 $$ SELECT {q}.test_now() $$;"
        )))
        .execute(storage.pool())
        .await
        .map_err(db)?;
        Ok(TestSchema { storage, url })
    }

    /// The storage under test.
    pub fn storage(&self) -> &PostgresStorage {
        &self.storage
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        self.storage.schema()
    }

    /// The server's URL (to open more storages or pools on the same schema).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Moves this schema's time forward by `by`: the storage reads time as `now()` plus
    /// the schema's test-clock offset, and this adds `by` to the offset. (Shifting stored
    /// timestamps instead would miss deadlines the engine keeps inside checkpoints, such
    /// as a durable sleep's wake time.)
    ///
    /// # Errors
    /// [`Error::Storage`] when the update fails.
    pub async fn advance(&self, by: Duration) -> Result<()> {
        let q = quote_ident(self.schema());
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {q}.test_clock SET offset_us = offset_us + $1"
        )))
        .bind(micros(by))
        .execute(self.storage.pool())
        .await
        .map_err(db)?;
        // Jobs may have become due: wake this process's workers like a clock change.
        self.storage.wake_local();
        Ok(())
    }

    /// Marks `job` finished with `status` (now, on the schema's test clock) the way a
    /// write from outside the library would: the row alone, with the `jobs_wake_parent`
    /// trigger disabled for that one transaction (the table is this schema's own), so its
    /// parent is not woken. The state [`durable_jobs::Storage::release_stale_locks`]'s
    /// healing sweep repairs.
    ///
    /// # Errors
    /// [`Error::Storage`] when the write fails.
    pub async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> Result<()> {
        let q = quote_ident(self.schema());
        let sql = format!(
            "BEGIN;
             ALTER TABLE {q}.jobs DISABLE TRIGGER jobs_wake_parent;
             UPDATE {q}.jobs SET status = '{status}', completed_at = {q}.test_now(),
                 updated_at = {q}.test_now(), lease_holder = NULL, lease_token = NULL,
                 lease_expires_at = NULL
             WHERE id = {job};
             ALTER TABLE {q}.jobs ENABLE TRIGGER jobs_wake_parent;
             COMMIT;",
            status = status.as_str(),
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(self.storage.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Drops the schema and everything in it, and closes the pool.
    ///
    /// # Errors
    /// [`Error::Storage`] when the drop fails.
    pub async fn drop_schema(self) -> Result<()> {
        let res = drop_schemas(self.storage.pool(), self.schema()).await;
        self.storage.pool().close().await;
        res.map(|_| ())
    }
}

/// Drops `schema` and the graphile-compatible schema migration 8 makes beside it
/// (`<schema>_graphile`), for tests that make a schema of their own.
///
/// # Errors
/// [`Error::Storage`] when a drop fails.
pub async fn drop_schemas(pool: &sqlx::PgPool, schema: &str) -> Result<()> {
    for name in [crate::migrate::graphile_schema(schema), schema.to_string()] {
        let q = quote_ident(&name);
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {q} CASCADE")))
            .execute(pool)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// The [`ConformanceHarness`] for PostgreSQL: a fresh schema per test.
#[derive(Debug)]
pub struct PostgresHarness(pub TestSchema);

#[async_trait]
impl ConformanceHarness for PostgresHarness {
    async fn setup() -> Self {
        match TestSchema::new().await {
            Ok(t) => PostgresHarness(t),
            Err(e) => panic!("postgres conformance setup: {e}"),
        }
    }

    fn storage(&self) -> DynStorage {
        Arc::new(self.0.storage().clone())
    }

    async fn advance(&self, by: Duration) {
        if let Err(e) = self.0.advance(by).await {
            panic!("postgres conformance advance: {e}");
        }
    }

    async fn teardown(self) {
        if let Err(e) = self.0.drop_schema().await {
            panic!("postgres conformance teardown: {e}");
        }
    }

    /// Writes the row with the `jobs_wake_parent` trigger disabled, in one transaction
    /// (see [`TestSchema::finish_out_of_band`]).
    async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> bool {
        if let Err(e) = self.0.finish_out_of_band(job, status).await {
            panic!("postgres conformance out-of-band write: {e}");
        }
        true
    }
}
