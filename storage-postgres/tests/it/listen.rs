//! LISTEN/NOTIFY wake-ups across storages (separate pools, as separate processes have).

use crate::{eventually, schema};
use durable_jobs::{NewJob, Storage};
use durable_jobs_postgres::listen::LISTENER_APPLICATION_NAME;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::AssertSqlSafe;
use std::time::Duration;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

async fn changed(rx: &mut watch::Receiver<u64>, what: &str) {
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no wake-up for {what} within {WAIT:?}"))
        .expect("wake-up channel open");
    rx.borrow_and_update();
}

async fn other_storage(url: &str, schema: &str) -> PostgresStorage {
    PostgresStorage::connect_with(
        url,
        PostgresOptions::new()
            .schema(schema)
            .max_connections(2)
            .listen(false),
    )
    .await
    .expect("second storage")
}

/// The backend pid of the listener for `schema`, once it is listening.
async fn listener_pid(s: &PostgresStorage) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = $1 AND query LIKE '%' || $2 || '%' ORDER BY backend_start DESC LIMIT 1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .bind(s.channel())
    .fetch_optional(s.pool())
    .await
    .expect("pg_stat_activity")
}

#[tokio::test]
async fn an_enqueue_elsewhere_wakes_this_storage() {
    let t = schema().await;
    let mut rx = t.storage().wakeups().expect("postgres has wake-ups");
    // The listener bumps once it is LISTENing (covering anything sent before).
    changed(&mut rx, "listener start").await;
    let other = other_storage(t.url(), t.schema()).await;
    other
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    changed(&mut rx, "enqueue from another pool").await;
    // SQL add_job wakes too (the insert trigger sends the NOTIFY).
    sqlx::query(AssertSqlSafe(format!(
        "SELECT \"{}\".add_job('t')",
        t.schema()
    )))
    .execute(other.pool())
    .await
    .expect("add_job");
    changed(&mut rx, "add_job from SQL").await;
    // A transactional enqueue wakes only at commit.
    let mut tx = other.pool().begin().await.expect("begin");
    other
        .enqueue_in_tx(&mut tx, NewJob::new("t", json!(2)))
        .await
        .expect("enqueue in tx");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.changed())
            .await
            .is_err(),
        "woken before commit"
    );
    tx.commit().await.expect("commit");
    changed(&mut rx, "commit").await;
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_bulk_insert_sends_one_notification() {
    let t = schema().await;
    let mut listener = PgListener::connect(t.url()).await.expect("listener");
    listener
        .listen(&t.storage().channel())
        .await
        .expect("listen");
    let jobs = (0..500).map(|i| NewJob::new("t", json!(i))).collect();
    t.storage().enqueue_many(jobs).await.expect("enqueue_many");
    // A marker after the bulk insert: everything before it has been delivered.
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(t.storage().channel())
        .execute(t.storage().pool())
        .await
        .expect("marker");
    let mut before_marker = 0;
    loop {
        let n = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("notification")
            .expect("recv");
        if n.payload() == "marker" {
            break;
        }
        before_marker += 1;
    }
    assert_eq!(before_marker, 1, "the bulk insert wakes listeners once");
    // PostgreSQL folds identical notifications within a transaction, so delivery alone
    // cannot tell a row trigger from a statement trigger; the catalog can (a row
    // trigger would run pg_notify 500 times).
    let tgtype: i16 = sqlx::query_scalar(
        "SELECT tgtype FROM pg_trigger WHERE tgname = 'jobs_notify_insert' AND tgrelid = $1::regclass",
    )
    .bind(format!("\"{}\".jobs", t.schema()))
    .fetch_one(t.storage().pool())
    .await
    .expect("trigger");
    assert_eq!(tgtype & 1, 0, "jobs_notify_insert is FOR EACH STATEMENT");
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_killed_listener_connection_reconnects_and_wakes_workers() {
    let t = schema().await;
    let s = t.storage();
    let mut rx = s.wakeups().expect("wake-ups");
    changed(&mut rx, "listener start").await;
    eventually("the listener backend", WAIT, || async {
        listener_pid(s).await.is_some()
    })
    .await;
    let first = listener_pid(s).await.expect("listener pid");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(s.pool())
        .await
        .expect("terminate");
    assert!(killed);
    // Notifications sent while it was down are lost, so reconnecting wakes workers.
    changed(&mut rx, "reconnect").await;
    eventually("a new listener backend", WAIT, || async {
        listener_pid(s).await.is_some_and(|pid| pid != first)
    })
    .await;
    rx.borrow_and_update();
    let other = other_storage(t.url(), t.schema()).await;
    other
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    changed(&mut rx, "enqueue after reconnect").await;
    t.drop_schema().await.expect("drop");
}

/// Receives notifications on `listener` up to a marker sent after everything before it;
/// returns how many came first.
async fn notifications_before_marker(listener: &mut PgListener, s: &PostgresStorage) -> usize {
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(s.channel())
        .execute(s.pool())
        .await
        .expect("marker");
    let mut before = 0;
    loop {
        let n = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("notification")
            .expect("recv");
        if n.payload() == "marker" {
            return before;
        }
        before += 1;
    }
}

/// The lease sweep wakes listeners in every process once when it releases jobs (they are
/// due at once), and not at all when no lease had expired.
#[tokio::test]
async fn a_sweep_that_releases_jobs_sends_one_notification() {
    let t = schema().await;
    let s = t.storage();
    let mut listener = PgListener::connect(t.url()).await.expect("listener");
    listener.listen(&s.channel()).await.expect("listen");
    s.enqueue_many((0..3).map(|i| NewJob::new("t", json!(i))).collect())
        .await
        .expect("enqueue");
    let claimed = s
        .dequeue(durable_jobs::DequeueParams {
            queues: vec!["default".into()],
            tasks: Vec::new(),
            limit: 10,
            lease_duration: Duration::from_secs(30),
            holder: "sweep".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue");
    assert_eq!(claimed.len(), 3);
    assert_eq!(
        notifications_before_marker(&mut listener, s).await,
        1,
        "enqueue"
    );

    let swept = s.release_stale_locks().await.expect("sweep");
    assert!(swept.released.is_empty());
    assert_eq!(
        notifications_before_marker(&mut listener, s).await,
        0,
        "nothing released, nothing sent"
    );

    t.advance(Duration::from_secs(31)).await.expect("advance");
    let swept = s.release_stale_locks().await.expect("sweep");
    assert_eq!(swept.released.len(), 3);
    assert_eq!(
        notifications_before_marker(&mut listener, s).await,
        1,
        "one notification for the released jobs"
    );
    t.drop_schema().await.expect("drop");
}
