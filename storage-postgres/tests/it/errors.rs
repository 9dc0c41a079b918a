//! Storage errors carry a kind that says whether retrying can help, and keep the sqlx
//! error as their source.

use crate::schema;
use durable_jobs::{Error, NewJob, Storage, StorageErrorKind};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde_json::json;
use std::time::Duration;

/// A loopback URL on a port nothing listens on: one the OS just handed out and took back.
fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn kind(err: &Error) -> Option<StorageErrorKind> {
    err.storage_kind()
}

/// The sqlx error behind a storage error.
fn sqlx_source(err: &Error) -> Option<&sqlx::Error> {
    match err {
        Error::Storage(e) => std::error::Error::source(e)?.downcast_ref::<sqlx::Error>(),
        _ => None,
    }
}

/// A server that refuses connections is `Unavailable` (transient), at connect time and
/// for a call on a pool that connects lazily, with the sqlx error as the source.
#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let url = refused_url();
    let err = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().acquire_timeout(Duration::from_secs(2)),
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(kind(&err), Some(StorageErrorKind::Unavailable), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("could not connect to PostgreSQL"),
        "{err}"
    );
    assert!(sqlx_source(&err).is_some(), "{err:?}");

    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)
        .expect("lazy pool");
    let s = PostgresStorage::from_pool_with(pool, PostgresOptions::new().listen(false))
        .expect("storage");
    let err = s.get_job(1).await.expect_err("nothing listens there");
    assert_eq!(kind(&err), Some(StorageErrorKind::Unavailable), "{err}");
    assert!(sqlx_source(&err).is_some(), "{err:?}");
}

/// Calls on a schema that was never migrated are `Schema` errors that say to migrate.
#[tokio::test]
async fn an_unmigrated_schema_is_a_schema_error() {
    let url = server_url().expect("server");
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new()
            .schema(unique_schema("dj_unmigrated"))
            .max_connections(2)
            .listen(false),
    )
    .await
    .expect("connect");
    let errors = [
        s.enqueue(NewJob::new("t", json!(1)))
            .await
            .expect_err("no tables"),
        s.get_job(1).await.expect_err("no tables"),
        s.list_workers().await.expect_err("no tables"),
    ];
    for err in errors {
        assert_eq!(kind(&err), Some(StorageErrorKind::Schema), "{err}");
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("call migrate()"), "{err}");
        assert!(
            matches!(sqlx_source(&err), Some(sqlx::Error::Database(_))),
            "{err:?}"
        );
    }
}

/// A statement that breaks a constraint is a `Constraint` error; a stored value that does
/// not decode is `Corrupt`.
#[tokio::test]
async fn constraint_and_undecodable_rows_have_their_kinds() {
    let t = schema().await;
    let s = t.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let q = format!("\"{}\"", t.schema());
    // A status this version does not know, written by hand (the check allows none, so
    // drop it first, as a newer or broken writer might have).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {q}.jobs DROP CONSTRAINT jobs_status_check;
         UPDATE {q}.jobs SET status = 'sleeping' WHERE id = {id};"
    )))
    .execute(s.pool())
    .await
    .expect("corrupt the row");
    let err = s.get_job(id).await.expect_err("unknown status");
    assert_eq!(kind(&err), Some(StorageErrorKind::Corrupt), "{err}");
    // A negative pid cannot be a process id.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {q}.workers (name, host, pid, queues, version, started_at, last_seen, lease_ms)
         VALUES ('w', 'h', -1, '[]', 'v', now(), now(), 1000)"
    )))
    .execute(s.pool())
    .await
    .expect("insert worker");
    let err = s.list_workers().await.expect_err("bad pid");
    assert_eq!(kind(&err), Some(StorageErrorKind::Corrupt), "{err}");
    // queues that are not a list of queues.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {q}.workers SET pid = 1, queues = '{{\"not\": \"a list\"}}'"
    )))
    .execute(s.pool())
    .await
    .expect("update worker");
    let err = s.list_workers().await.expect_err("bad queues");
    assert_eq!(kind(&err), Some(StorageErrorKind::Corrupt), "{err}");
    // A job that breaks the table's check (at least one attempt).
    let mut bad = NewJob::new("t", json!(2));
    bad.max_attempts = 0;
    let err = s.enqueue(bad).await.expect_err("max_attempts 0");
    assert_eq!(kind(&err), Some(StorageErrorKind::Constraint), "{err}");
    assert!(err.to_string().contains("23514"), "{err}");
    t.drop_schema().await.expect("drop");
}

/// A schema a previous version migrated (version 4, before the trace context column)
/// gives `Schema` errors that say to migrate, until `migrate()` brings it up to date.
#[tokio::test]
async fn a_schema_left_at_an_older_version_is_a_schema_error_until_migrated() {
    use durable_jobs_postgres::migrate::{render, MIGRATIONS};
    let url = server_url().expect("server");
    let name = unique_schema("dj_v4");
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new()
            .schema(&name)
            .max_connections(2)
            .listen(false),
    )
    .await
    .expect("connect");
    let mut sql = format!(
        "CREATE SCHEMA \"{name}\";
         CREATE TABLE \"{name}\".migrations (version bigint PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for m in &MIGRATIONS[..4] {
        sql.push_str(&render(m.sql, &name));
        sql.push_str(&format!(
            "\nINSERT INTO \"{name}\".migrations (version, name) VALUES ({}, '{}');\n",
            m.version, m.name
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(s.pool())
        .await
        .expect("version 4 schema");
    let err = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect_err("no trace_context column yet");
    assert_eq!(kind(&err), Some(StorageErrorKind::Schema), "{err}");
    assert!(err.to_string().contains("call migrate()"), "{err}");
    s.migrate().await.expect("migrate");
    let id = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    assert!(s.get_job(id).await.expect("get").is_some());
    durable_jobs_postgres::testing::drop_schemas(s.pool(), &name)
        .await
        .expect("drop");
}
