//! The storage's own connection pool: connections the server dropped while idle.

use crate::{eventually, schema};
use durable_jobs::Storage;
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::time::Duration;

/// A one-connection storage on `t`'s schema whose connection the server then drops while
/// it sits idle in the pool, as a restart or a firewall would.
async fn storage_with_dropped_connection(
    t: &TestSchema,
    ping_idle_after: Duration,
) -> PostgresStorage {
    let s = PostgresStorage::connect_with(
        t.url(),
        PostgresOptions::new()
            .schema(t.schema())
            .max_connections(1)
            .listen(false)
            .ping_idle_after(ping_idle_after),
    )
    .await
    .expect("storage");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(s.pool())
        .await
        .expect("pid");
    // sqlx hands a connection back to the pool in a task of its own: drop it only once
    // it is back and idle.
    eventually(
        "the connection back in the pool",
        Duration::from_secs(10),
        || async { s.pool().num_idle() == 1 },
    )
    .await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(t.storage().pool())
        .await
        .expect("terminate");
    assert!(killed, "backend {pid} not terminated");
    eventually("the backend to exit", Duration::from_secs(10), || async {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(t.storage().pool())
                .await
                .expect("pg_stat_activity");
        !alive
    })
    .await;
    s
}

/// A connection idle for `ping_idle_after` is checked on its way out of the pool and
/// replaced if the server dropped it. Busier connections go out unchecked (a ping before
/// every statement doubled its round trips), so one dropped moments ago fails the
/// statement it is given.
#[tokio::test]
async fn connections_dropped_while_idle_are_replaced_once_checked() {
    let t = schema().await;
    let checked = storage_with_dropped_connection(&t, Duration::ZERO).await;
    assert_eq!(
        checked
            .get_job(1)
            .await
            .expect("a fresh connection replaced the dropped one"),
        None
    );
    let unchecked = storage_with_dropped_connection(&t, Duration::from_secs(3600)).await;
    assert!(
        unchecked.get_job(1).await.is_err(),
        "the dropped connection went out unchecked, yet its statement worked"
    );
    t.drop_schema().await.expect("drop");
}
