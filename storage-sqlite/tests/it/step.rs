//! Transactional steps and enqueue in the caller's transaction on SQLite: a step's
//! business write and its checkpoint commit together or not at all.

use crate::TempDb;
use durable_jobs::{
    CheckpointOutcome, JobContext, JobOptions, JobStatus, ManualClock, NoRetry, Queue, RetryPolicy,
    Storage, TaskError, TaskErrorKind, Worker, WorkerOptions,
};
use durable_jobs_sqlite::rusqlite::{self, Connection, TransactionBehavior};
use durable_jobs_sqlite::{SqliteStepExt, SqliteStorage};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A storage with a `payments` table beside the library's, and a queue on it that
/// retries at once.
async fn setup(db: &TempDb) -> (SqliteStorage, Queue) {
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    raw(db)
        .execute_batch(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL UNIQUE, \
             cents INTEGER NOT NULL)",
        )
        .expect("create payments");
    let q = Queue::new(Arc::new(s.clone()));
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    (s, q)
}

fn raw(db: &TempDb) -> Connection {
    let conn = Connection::open(db.path()).expect("open a raw connection");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

fn payments(db: &TempDb) -> Vec<(i64, i64)> {
    let conn = raw(db);
    let mut st = conn
        .prepare("SELECT order_id, cents FROM payments ORDER BY id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

fn worker(q: &Queue) -> Worker {
    Worker::new(q.clone(), WorkerOptions::new().queue("default", 1)).expect("worker")
}

/// Inserts the payment of order `order` on the step's connection and returns its id.
fn charge(conn: &Connection, order: i64) -> Result<i64, TaskError> {
    conn.execute(
        "INSERT INTO payments (order_id, cents) VALUES (?1, 1299)",
        [order],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The step's write and its checkpoint commit together; a retry replays the stored
/// value without running the closure again.
#[tokio::test]
async fn step_write_commits_with_its_checkpoint_and_replays() {
    let db = TempDb::fresh();
    let (s, q) = setup(&db).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (st, r) = (s.clone(), runs.clone());
    q.register("order", move |ctx: JobContext, order: i64| {
        let (st, r) = (st.clone(), r.clone());
        async move {
            let r2 = r.clone();
            let paid: i64 = ctx
                .sqlite_step(&st, "charge", move |conn| {
                    r2.fetch_add(1, Ordering::SeqCst);
                    charge(conn, order)
                })
                .await?;
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("crash after the charge"));
            }
            Ok::<_, TaskError>(paid)
        }
    });
    let id = q
        .enqueue("order", &7, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!((report.retried, report.completed), (1, 1));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the closure ran once");
    assert_eq!(payments(&db), vec![(7, 1299)]);
    let job = q.get_job(id).await.expect("get").expect("job");
    let cps = s.list_checkpoints(id).await.expect("checkpoints");
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].name, "charge");
    let CheckpointOutcome::Ok(stored) = &cps[0].outcome else {
        panic!("charge stored {:?}", cps[0].outcome);
    };
    assert_eq!(job.result.as_ref(), Some(stored));
    s.close().await;
}

/// A closure that fails after writing leaves nothing behind: a retryable error rolls the
/// write back and the retry writes once; a terminal error rolls it back and is stored.
#[tokio::test]
async fn failing_closure_rolls_its_write_back() {
    let db = TempDb::fresh();
    let (s, q) = setup(&db).await;
    let st = s.clone();
    q.register("order", move |ctx: JobContext, order: i64| {
        let st = st.clone();
        async move {
            let attempt = ctx.attempt();
            let paid: i64 = ctx
                .sqlite_step(&st, "charge", move |conn| {
                    let id = charge(conn, order)?;
                    match (order, attempt) {
                        (1, 1) => Err(TaskError::retry("gateway timeout")),
                        (2, _) => Err(NoRetry("card declined").into()),
                        _ => Ok(id),
                    }
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
    assert_eq!(
        payments(&db),
        vec![(1, 1299)],
        "only the retried success is kept"
    );
    let job = q.get_job(retried).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    let job = q.get_job(declined).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    let cps = s.list_checkpoints(declined).await.expect("checkpoints");
    assert!(
        matches!(&cps[..], [c] if c.outcome == CheckpointOutcome::Err("card declined".into())),
        "{cps:?}"
    );
    s.close().await;
}

/// A job reclaimed by another worker before the step commits: the step fails with a lost
/// lease and its write is rolled back, and no checkpoint is stored.
#[tokio::test]
async fn stale_lease_fails_the_step_and_rolls_the_write_back() {
    let db = TempDb::fresh();
    let (s, q) = setup(&db).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<TaskErrorKind>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let (st, path) = (s.clone(), db.path());
    q.register("order", move |ctx: JobContext, order: i64| {
        let (st, path, tx) = (st.clone(), path.clone(), tx.clone());
        async move {
            // Another worker's claim after a reclaim: a new attempt with a new token.
            let conn = Connection::open(&path).map_err(TaskError::retry)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.execute(
                "UPDATE durable_jobs SET attempt = attempt + 1, lease_token = lease_token + 1 \
                 WHERE id = ?1",
                [ctx.job_id()],
            )?;
            let out = ctx
                .sqlite_step(&st, "charge", move |conn| charge(conn, order))
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
    let w = worker(&q);
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let run = w.run_until(async move {
        let _ = seen_tx.send(rx.await);
    });
    run.await.expect("worker");
    assert_eq!(
        seen.await.expect("step outcome"),
        Ok(TaskErrorKind::LeaseLost)
    );
    assert!(payments(&db).is_empty(), "the write was rolled back");
    assert!(s
        .list_checkpoints(id)
        .await
        .expect("checkpoints")
        .is_empty());
    s.close().await;
}

/// A job enqueued in the caller's own rusqlite transaction exists only if it commits,
/// and a step can enqueue on its connection atomically with its write.
#[tokio::test]
async fn enqueue_in_the_callers_transaction() {
    let db = TempDb::fresh();
    let (s, q) = setup(&db).await;
    let mut conn = raw(&db);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    charge(&tx, 1).expect("business write");
    let gone = s
        .enqueue_in_tx(&tx, durable_jobs::NewJob::new("receipt", json!(1)))
        .expect("enqueue in tx");
    tx.rollback().expect("rollback");
    assert!(s.get_job(gone.id).await.expect("get").is_none());

    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    charge(&tx, 2).expect("business write");
    let kept = s
        .enqueue_many_in_tx(
            &tx,
            vec![
                durable_jobs::NewJob::new("receipt", json!(2)),
                durable_jobs::NewJob::new("receipt", json!(3)),
            ],
        )
        .expect("enqueue many in tx");
    tx.commit().expect("commit");
    // Outside a transaction it runs in one of its own.
    let alone = s
        .enqueue_in_tx(&conn, durable_jobs::NewJob::new("receipt", json!(4)))
        .expect("enqueue alone");
    for e in kept.iter().chain([&alone]) {
        let job = s.get_job(e.id).await.expect("get").expect("committed job");
        assert_eq!(job.status, JobStatus::Pending);
    }

    // Inside a step: the receipt job commits with the payment.
    let st = s.clone();
    q.register("order", move |ctx: JobContext, order: i64| {
        let st = st.clone();
        async move {
            let st2 = st.clone();
            let receipt = ctx
                .sqlite_step(&st, "charge", move |conn| {
                    charge(conn, order)?;
                    Ok(st2
                        .enqueue_in_tx(conn, durable_jobs::NewJob::new("receipt", json!(order)))?
                        .id)
                })
                .await?;
            Ok::<_, TaskError>(receipt)
        }
    });
    q.register_fn("receipt", |_: i64| async { Ok::<_, TaskError>(()) });
    let id = q
        .enqueue("order", &5, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!(report.completed, 5, "{report:?}");
    let job = q.get_job(id).await.expect("get").expect("job");
    let receipt: i64 = serde_json::from_value(job.result.expect("result")).expect("an id");
    let receipt = s.get_job(receipt).await.expect("get").expect("receipt job");
    assert_eq!(receipt.payload, json!(5));
    assert_eq!(receipt.status, JobStatus::Completed);
    assert_eq!(payments(&db), vec![(2, 1299), (5, 1299)]);
    s.close().await;
}

/// A replay that meets another step name at a transactional step's position is a
/// non-determinism error, as for every step: the job fails and the closure never runs.
#[tokio::test]
async fn replay_under_another_name_is_non_determinism() {
    let db = TempDb::fresh();
    let (s, q) = setup(&db).await;
    let st = s.clone();
    q.register("order", move |ctx: JobContext, order: i64| {
        let st = st.clone();
        async move {
            let name = if ctx.attempt() == 1 {
                "charge"
            } else {
                "refund"
            };
            let paid: i64 = ctx
                .sqlite_step(&st, name, move |conn| charge(conn, order))
                .await?;
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("crash after the charge"));
            }
            Ok::<_, TaskError>(paid)
        }
    });
    let id = q
        .enqueue("order", &9, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!((report.retried, report.failed), (1, 1), "{report:?}");
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("charge") && error.contains("refund"),
        "{error}"
    );
    assert_eq!(
        payments(&db),
        vec![(9, 1299)],
        "the second closure never ran"
    );
    s.close().await;
}
