//! Transactional steps on PostgreSQL: a step's business write and its checkpoint commit
//! in one transaction, fenced by the lease; directly and behind pgBouncer in transaction
//! mode.

use crate::schema;
use durable_jobs::{
    CheckpointOutcome, JobContext, JobOptions, JobStatus, NewJob, NoRetry, Queue, RetryPolicy,
    Storage, TaskError, TaskErrorKind, Worker, WorkerOptions,
};
use durable_jobs_postgres::testing::{PgBouncerHarness, TestSchema};
use durable_jobs_postgres::{PostgresStepExt, PostgresStorage};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Creates `payments` in the test's schema; returns its qualified name.
async fn payments_table(t: &TestSchema) -> String {
    let table = format!("\"{}\".payments", t.schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, order_id bigint NOT NULL UNIQUE, \
         cents bigint NOT NULL)"
    )))
    .execute(t.storage().pool())
    .await
    .expect("create payments");
    table
}

/// A queue on `s` that retries at once.
fn queue(s: &PostgresStorage) -> Queue {
    let q = Queue::new(Arc::new(s.clone()));
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    q
}

fn worker(q: &Queue) -> Worker {
    Worker::new(q.clone(), WorkerOptions::new().queue("default", 1)).expect("worker")
}

async fn payments(t: &TestSchema, table: &str) -> Vec<(i64, i64)> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT order_id, cents FROM {table} ORDER BY id"
    )))
    .fetch_all(t.storage().pool())
    .await
    .expect("read payments")
}

/// Inserts the payment of `order` on the step's transaction and returns its id; unnamed,
/// so it also runs behind a transaction-mode pooler.
async fn charge(tx: &mut PgConnection, table: &str, order: i64) -> Result<i64, TaskError> {
    let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO {table} (order_id, cents) VALUES ($1, 1299) RETURNING id"
    )))
    .bind(order)
    .persistent(false)
    .fetch_one(tx)
    .await?;
    Ok(id)
}

/// Registers `order`: charges in a step on `s`, then fails its first attempt after the
/// step; counts the closure's runs.
fn register_order(q: &Queue, s: &PostgresStorage, table: &str, runs: &Arc<AtomicU32>) {
    let (s, table, runs) = (s.clone(), table.to_string(), runs.clone());
    q.register("order", move |ctx: JobContext, order: i64| {
        let (s, table, runs) = (s.clone(), table.clone(), runs.clone());
        async move {
            let paid: i64 = ctx
                .pg_step(&s, "charge", move |tx| {
                    Box::pin(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        charge(tx, &table, order).await
                    })
                })
                .await?;
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("crash after the charge"));
            }
            Ok::<_, TaskError>(paid)
        }
    });
}

/// Runs one order through a step on `s`, with a retry after the step; checks the one
/// write, the one closure run, and the replayed value.
async fn write_commits_with_checkpoint_and_replays(t: &TestSchema, s: &PostgresStorage) {
    let table = payments_table(t).await;
    let q = queue(s);
    let runs = Arc::new(AtomicU32::new(0));
    register_order(&q, s, &table, &runs);
    let id = q
        .enqueue("order", &7, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!((report.retried, report.completed), (1, 1), "{report:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the closure ran once");
    assert_eq!(payments(t, &table).await, vec![(7, 1299)]);
    let cps = t.storage().list_checkpoints(id).await.expect("checkpoints");
    assert_eq!(cps.len(), 1, "{cps:?}");
    assert_eq!(cps[0].name, "charge");
    let CheckpointOutcome::Ok(stored) = &cps[0].outcome else {
        panic!("charge stored {:?}", cps[0].outcome);
    };
    let job = t.storage().get_job(id).await.expect("get").expect("job");
    assert_eq!(job.result.as_ref(), Some(stored));
}

/// The step's write and its checkpoint commit together; a retry replays the stored
/// value without running the closure again.
#[tokio::test]
async fn step_write_commits_with_its_checkpoint_and_replays() {
    let t = schema().await;
    let s = t.storage().clone();
    write_commits_with_checkpoint_and_replays(&t, &s).await;
    t.drop_schema().await.expect("drop");
}

/// The same through pgBouncer in transaction mode: the step's transaction keeps one
/// server connection and its statements run unnamed.
#[tokio::test]
async fn step_works_behind_pgbouncer_in_transaction_mode() {
    let h = PgBouncerHarness::new().await.expect("pgbouncer harness");
    write_commits_with_checkpoint_and_replays(h.direct(), h.storage()).await;
}

/// A closure that fails after writing leaves nothing behind: a retryable error rolls the
/// write back and the retry writes once; a terminal error rolls it back and is stored.
#[tokio::test]
async fn failing_closure_rolls_its_write_back() {
    let t = schema().await;
    let table = payments_table(&t).await;
    let s = t.storage().clone();
    let q = queue(&s);
    let st = s.clone();
    let tb = table.clone();
    q.register("order", move |ctx: JobContext, order: i64| {
        let (st, tb) = (st.clone(), tb.clone());
        async move {
            let attempt = ctx.attempt();
            let paid: i64 = ctx
                .pg_step(&st, "charge", move |tx| {
                    Box::pin(async move {
                        let id = charge(tx, &tb, order).await?;
                        match (order, attempt) {
                            (1, 1) => Err(TaskError::retry("gateway timeout")),
                            (2, _) => Err(NoRetry("card declined").into()),
                            _ => Ok(id),
                        }
                    })
                })
                .await?;
            Ok::<_, TaskError>(paid)
        }
    });
    let retried = q
        .enqueue("order", &1, JobOptions::new())
        .await
        .expect("enqueue");
    let declined = q
        .enqueue("order", &2, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!((report.completed, report.failed), (1, 1), "{report:?}");
    assert_eq!(payments(&t, &table).await, vec![(1, 1299)]);
    let job = s.get_job(retried).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    let job = s.get_job(declined).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    let cps = s.list_checkpoints(declined).await.expect("checkpoints");
    assert!(
        matches!(&cps[..], [c] if c.outcome == CheckpointOutcome::Err("card declined".into())),
        "{cps:?}"
    );
    t.drop_schema().await.expect("drop");
}

/// A job reclaimed by another worker before the step commits: the step fails with a lost
/// lease, its write is rolled back, and no checkpoint is stored.
#[tokio::test]
async fn stale_lease_fails_the_step_and_rolls_the_write_back() {
    let t = schema().await;
    let table = payments_table(&t).await;
    let s = t.storage().clone();
    let q = queue(&s);
    let (tx, rx) = tokio::sync::oneshot::channel::<TaskErrorKind>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let jobs = format!("\"{}\".jobs", t.schema());
    let (st, tb) = (s.clone(), table.clone());
    q.register("order", move |ctx: JobContext, order: i64| {
        let (st, tb, tx, jobs) = (st.clone(), tb.clone(), tx.clone(), jobs.clone());
        async move {
            // Another worker's claim after a reclaim: a new attempt with a new token.
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {jobs} SET attempt = attempt + 1, lease_token = lease_token + 1 \
                 WHERE id = $1"
            )))
            .bind(ctx.job_id())
            .execute(st.pool())
            .await?;
            let out = ctx
                .pg_step(&st, "charge", move |c| {
                    Box::pin(async move { charge(c, &tb, order).await })
                })
                .await;
            let kind = out
                .as_ref()
                .map_or_else(|e| e.kind(), |_| TaskErrorKind::Retry);
            if let Some(tx) = tx.lock().expect("lock").take() {
                let _ = tx.send(kind);
            }
            out
        }
    });
    let id = q
        .enqueue("order", &3, JobOptions::new())
        .await
        .expect("enqueue");
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    worker(&q)
        .run_until(async move {
            let _ = seen_tx.send(rx.await);
        })
        .await
        .expect("worker");
    assert_eq!(
        seen.await.expect("step outcome"),
        Ok(TaskErrorKind::LeaseLost)
    );
    assert!(payments(&t, &table).await.is_empty(), "rolled back");
    assert!(s
        .list_checkpoints(id)
        .await
        .expect("checkpoints")
        .is_empty());
    t.drop_schema().await.expect("drop");
}

/// A step enqueues on its own transaction: the job commits with the payment, and not
/// when the step rolls back.
#[tokio::test]
async fn step_enqueues_atomically_with_its_write() {
    let t = schema().await;
    let table = payments_table(&t).await;
    let s = t.storage().clone();
    let q = queue(&s);
    let (st, tb) = (s.clone(), table.clone());
    q.register("order", move |ctx: JobContext, order: i64| {
        let (st, tb) = (st.clone(), tb.clone());
        async move {
            let attempt = ctx.attempt();
            let st2 = st.clone();
            let receipt: i64 = ctx
                .pg_step(&st, "charge", move |tx| {
                    Box::pin(async move {
                        charge(tx, &tb, order).await?;
                        let job = st2
                            .enqueue_in_tx(tx, NewJob::new("receipt", json!([order, attempt])))
                            .await?;
                        if attempt == 1 {
                            return Err(TaskError::retry("crash before the commit"));
                        }
                        Ok(job.id)
                    })
                })
                .await?;
            Ok::<_, TaskError>(receipt)
        }
    });
    q.register_fn("receipt", |_: serde_json::Value| async {
        Ok::<_, TaskError>(())
    });
    let id = q
        .enqueue("order", &5, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!(report.completed, 2, "{report:?}");
    let receipts = s
        .list_jobs(durable_jobs::JobFilter {
            task: Some("receipt".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(receipts[0].payload, json!([5, 2]), "the second attempt's");
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.result, Some(json!(receipts[0].id)));
    assert_eq!(payments(&t, &table).await, vec![(5, 1299)]);
    t.drop_schema().await.expect("drop");
}

/// A job whose lease expired while a step's transaction is open is not reclaimed until
/// that transaction ends: the step's `FOR SHARE` lock on the job row makes the sweep skip
/// it (the sweep takes `FOR UPDATE SKIP LOCKED`), the step commits under the lease it
/// began with, the next sweep reclaims the job, and the next attempt replays the step
/// instead of charging again.
#[tokio::test]
async fn a_reclaim_skips_a_job_whose_step_is_open() {
    let t = schema().await;
    let table = payments_table(&t).await;
    let s = t.storage().clone();
    let q = queue(&s);
    let inside = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let stepped = Arc::new(tokio::sync::Notify::new());
    let swept = Arc::new(tokio::sync::Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    {
        let (s, table, runs) = (s.clone(), table.clone(), runs.clone());
        let gates = (
            inside.clone(),
            release.clone(),
            stepped.clone(),
            swept.clone(),
        );
        q.register("order", move |ctx: JobContext, order: i64| {
            let (s, table, runs) = (s.clone(), table.clone(), runs.clone());
            let (inside, release, stepped, swept) = gates.clone();
            async move {
                let paid: i64 = ctx
                    .pg_step(&s, "charge", move |tx| {
                        Box::pin(async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let id = charge(tx, &table, order).await?;
                            // Hold the step's transaction open until the test lets go.
                            inside.notify_one();
                            release.notified().await;
                            Ok(id)
                        })
                    })
                    .await?;
                if ctx.attempt() == 1 {
                    // Finish only once the reclaim has gone through, so this attempt's
                    // completion is the one refused (its lease is gone).
                    stepped.notify_one();
                    swept.notified().await;
                }
                Ok::<_, TaskError>(paid)
            }
        });
    }
    let id = q
        .enqueue("order", &5, JobOptions::new())
        .await
        .expect("enqueue");
    let controller = async {
        inside.notified().await;
        // The 30-second lease has expired on the storage's clock, the step is still open.
        t.advance(Duration::from_secs(60)).await.expect("advance");
        let during = s
            .release_stale_locks()
            .await
            .expect("sweep during the step");
        release.notify_one();
        stepped.notified().await;
        let after = s.release_stale_locks().await.expect("sweep after the step");
        swept.notify_one();
        (during.released.len(), after.released.len())
    };
    let w = worker(&q);
    let (report, released) = tokio::join!(w.drain(), controller);
    let report = report.expect("drain");
    assert_eq!(
        released,
        (0, 1),
        "skipped while the step was open, then reclaimed"
    );
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the closure ran once");
    assert_eq!(payments(&t, &table).await, vec![(5, 1299)]);
    assert_eq!(s.list_checkpoints(id).await.expect("checkpoints").len(), 1);
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!((job.status, job.attempt), (JobStatus::Completed, 2));
    t.drop_schema().await.expect("drop");
}
