//! PostgreSQL behind a real pgBouncer in transaction mode (the Debian package, started by
//! the test harness on a free port): the conformance suites through it, what breaks
//! without `PostgresOptions::pgbouncer_transaction_mode`, and wake-ups through the
//! direct URL or by polling.

use crate::schema;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{
    DequeueParams, DynStorage, JobContext, JobStatus, NewJob, Queue, Storage, TaskError, Worker,
    WorkerOptions,
};
use durable_jobs_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use durable_jobs_postgres::testing::{shared_pgbouncer, PgBouncer, PgBouncerHarness, TestSchema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde_json::json;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod conformance {
    use durable_jobs_postgres::testing::PgBouncerHarness;
    durable_jobs::conformance_tests!(PgBouncerHarness);
}

/// Long enough for any wake-up on a loaded machine; only a failure waits this long.
const WAIT: Duration = Duration::from_secs(30);

/// A pgBouncer of this test's own whose pool has one server connection, so every client
/// connection shares it, as clients of a busy pooler share a few.
fn one_server_connection(t: &TestSchema) -> PgBouncer {
    PgBouncer::start(t.url(), 1).expect("start pgbouncer")
}

/// A storage on `t`'s schema through `bouncer`, from a pool that pgBouncer accepts
/// (no `extra_float_digits`), with `options` deciding how statements run.
fn through(bouncer: &PgBouncer, t: &TestSchema, options: PostgresOptions) -> PostgresStorage {
    let connect = PgConnectOptions::from_str(bouncer.url())
        .expect("pgbouncer url")
        .extra_float_digits(None);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with(connect);
    PostgresStorage::from_pool_with(pool, options.schema(t.schema()).listen(false))
        .expect("storage")
}

/// Enqueues, claims and completes `rounds` batches of jobs from several tasks at once,
/// so the pool opens several client connections; returns the first error.
async fn workload(s: &PostgresStorage, rounds: usize) -> durable_jobs::Result<usize> {
    let mut done = 0;
    for round in 0..rounds {
        let calls = (0..4).map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let id = s.enqueue(NewJob::new("t", json!([round, i]))).await?.id;
                let job = s.get_job(id).await?;
                assert!(job.is_some(), "job {id} enqueued but not found");
                Ok::<_, durable_jobs::Error>(())
            })
        });
        for call in futures_join(calls).await {
            call.expect("task")?;
        }
        let claimed = s
            .dequeue(DequeueParams {
                queues: vec!["default".into()],
                tasks: vec!["t".into()],
                limit: 4,
                lease_duration: Duration::from_secs(60),
                holder: "w".into(),
                forbidden_flags: Vec::new(),
            })
            .await?;
        for c in claimed {
            s.complete(&c.lease, json!("ok")).await?;
            done += 1;
        }
    }
    Ok(done)
}

/// Awaits every handle, in order.
async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let handles: Vec<_> = handles.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test]
async fn a_default_connection_is_refused_for_its_extra_float_digits() {
    let t = schema().await;
    let bouncer = shared_pgbouncer().expect("pgbouncer");
    let err =
        PostgresStorage::connect_with(bouncer.url(), PostgresOptions::new().schema(t.schema()))
            .await
            .expect_err("pgbouncer refuses sqlx's default startup parameters");
    assert!(err.to_string().contains("extra_float_digits"), "{err}");
    let s = PostgresStorage::connect_with(
        bouncer.url(),
        PostgresOptions::new()
            .schema(t.schema())
            .pgbouncer_transaction_mode(None),
    )
    .await
    .expect("with the option, the connection is accepted");
    assert_eq!(
        s.schema_version().await.expect("version"),
        durable_jobs_postgres::LATEST_VERSION
    );
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn named_statements_collide_without_the_option_and_not_with_it() {
    let t = schema().await;
    let bouncer = one_server_connection(&t);
    // sqlx names the statements it caches per client connection (sqlx_s_1, ...): two
    // client connections on one server connection prepare the same name.
    let plain = through(&bouncer, &t, PostgresOptions::new());
    let err = workload(&plain, 4)
        .await
        .expect_err("named statements cannot work through transaction pooling");
    assert!(err.to_string().contains("prepared statement"), "{err}");
    plain.pool().close().await;

    let pooled = through(
        &bouncer,
        &t,
        PostgresOptions::new().pgbouncer_transaction_mode(None),
    );
    assert_eq!(workload(&pooled, 25).await.expect("workload"), 100);
    pooled.pool().close().await;
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn an_enqueue_elsewhere_wakes_the_storage_through_its_direct_url() {
    let h = PgBouncerHarness::new().await.expect("harness");
    let s = h.storage();
    assert!(s.capabilities().cross_process_wakeup);
    let mut rx = s.wakeups().expect("wake-ups");
    // The listener (on the direct URL) bumps once it is LISTENing.
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("listener start")
        .expect("open");
    rx.borrow_and_update();
    // Another process's enqueue (its own pool, no listener of its own).
    let other = PostgresStorage::connect_with(
        h.direct().url(),
        PostgresOptions::new()
            .schema(h.direct().schema())
            .max_connections(1)
            .listen(false),
    )
    .await
    .expect("other storage");
    other
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("a NOTIFY through the direct URL wakes the storage")
        .expect("open");
    other.pool().close().await;
    h.teardown().await;
}

#[tokio::test]
async fn without_a_direct_url_workers_poll() {
    let t = schema().await;
    let bouncer = shared_pgbouncer().expect("pgbouncer");
    let s = PostgresStorage::connect_with(
        bouncer.url(),
        PostgresOptions::new()
            .schema(t.schema())
            .max_connections(4)
            .pgbouncer_transaction_mode(None),
    )
    .await
    .expect("storage");
    assert!(!s.capabilities().cross_process_wakeup);
    assert!(!s.options().listens());
    let storage: DynStorage = Arc::new(s.clone());
    let queue = Queue::new(storage);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    queue.register("t", move |_ctx: JobContext, v: serde_json::Value| {
        let done_tx = done_tx.clone();
        async move {
            if let Some(tx) = done_tx.lock().expect("lock").take() {
                let _ = tx.send(v);
            }
            Ok::<_, TaskError>(())
        }
    });
    let worker = Worker::new(
        queue,
        WorkerOptions::new()
            .queue("default", 1)
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("worker");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        worker
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
    });
    // Enqueued by another process: no NOTIFY reaches this storage, a poll finds it.
    let id = t
        .storage()
        .enqueue(NewJob::new("t", json!("polled")))
        .await
        .expect("enqueue")
        .id;
    let ran = tokio::time::timeout(WAIT, done_rx)
        .await
        .expect("a poll finds the job")
        .expect("handler ran");
    assert_eq!(ran, json!("polled"));
    let _ = stop_tx.send(());
    run.await.expect("worker task").expect("worker");
    let job = t.storage().get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    s.pool().close().await;
    t.drop_schema().await.expect("drop");
}
