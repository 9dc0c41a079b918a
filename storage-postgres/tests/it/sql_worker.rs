//! The SQL worker protocol (migration 7): `get_job`, `complete_job` and `fail_job`,
//! driven from plain SQL as a worker in another language would.

use crate::schema;
use durable_jobs::{AttemptOutcome, JobStatus, NewJob, Storage};
use durable_jobs_postgres::sqlx::{self, postgres::PgRow, AssertSqlSafe, PgPool, Row};
use serde_json::json;
use std::time::Duration;

fn q(schema: &str, sql: &str) -> String {
    sql.replace("{s}", &format!("\"{schema}\""))
}

/// `get_job` as a worker calls it: (id, task, payload, attempt, queue, lease_token), or
/// `None` when nothing is due.
async fn get_job(
    pool: &PgPool,
    schema: &str,
    worker: &str,
    tasks: Option<&[&str]>,
    expiry: &str,
) -> Option<PgRow> {
    let tasks: Option<Vec<String>> = tasks.map(|t| t.iter().map(|s| s.to_string()).collect());
    sqlx::query(AssertSqlSafe(q(
        schema,
        "SELECT id, task, payload, attempt, max_attempts, queue, lease_token, lease_holder, status
         FROM {s}.get_job($1, $2, $3::interval)",
    )))
    .bind(worker)
    .bind(tasks)
    .bind(expiry)
    .fetch_optional(pool)
    .await
    .expect("get_job")
}

async fn complete_job(
    pool: &PgPool,
    schema: &str,
    worker: &str,
    id: i64,
    result: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(q(
        schema,
        "SELECT {s}.complete_job($1, $2, $3)",
    )))
    .bind(worker)
    .bind(id)
    .bind(result)
    .execute(pool)
    .await
    .map(|_| ())
}

async fn fail_job(
    pool: &PgPool,
    schema: &str,
    worker: &str,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(q(schema, "SELECT {s}.fail_job($1, $2, $3)")))
        .bind(worker)
        .bind(id)
        .bind(error)
        .execute(pool)
        .await
        .map(|_| ())
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// A SQL worker loop: claim with get_job until none is due, complete each job with a
/// result computed from its payload. Each job ends completed with that result and an
/// attempt history naming the worker and the outcome.
#[tokio::test]
async fn sql_worker_loop_claims_and_completes() {
    let t = schema().await;
    let s = t.storage();
    let pool = s.pool();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            s.enqueue(NewJob::new("double", json!({ "n": i })))
                .await
                .expect("enqueue")
                .id,
        );
    }
    let mut done = Vec::new();
    while let Some(row) = get_job(pool, t.schema(), "sql-worker-1", None, "5 minutes").await {
        let id: i64 = row.get("id");
        assert_eq!(row.get::<String, _>("task"), "double");
        assert_eq!(row.get::<i32, _>("attempt"), 1);
        assert_eq!(row.get::<String, _>("status"), "running");
        assert_eq!(row.get::<String, _>("lease_holder"), "sql-worker-1");
        assert!(row.get::<Option<i64>, _>("lease_token").is_some());
        let job = s.get_job(id).await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Running);
        let lease = job.lease.expect("leased");
        assert_eq!(lease.holder, "sql-worker-1");
        let now = s.now().await.expect("now");
        assert!(lease.expires_at > now + chrono::Duration::minutes(4));
        assert!(lease.expires_at <= now + chrono::Duration::minutes(5));

        let payload: serde_json::Value = row.get("payload");
        let n = payload["n"].as_i64().expect("n");
        complete_job(
            pool,
            t.schema(),
            "sql-worker-1",
            id,
            json!({ "doubled": n * 2 }),
        )
        .await
        .expect("complete_job");
        done.push(id);
    }
    // Claim order: same priority, run_at then id.
    assert_eq!(done, ids);
    for (i, id) in ids.iter().enumerate() {
        let job = s.get_job(*id).await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.result, Some(json!({ "doubled": i as i64 * 2 })));
        assert!(job.lease.is_none());
        assert!(job.completed_at.is_some());
        let attempts = s.list_attempts(*id).await.expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].attempt, 1);
        assert_eq!(attempts[0].worker.as_deref(), Some("sql-worker-1"));
        assert_eq!(attempts[0].outcome, AttemptOutcome::Completed);
        assert!(attempts[0].finished_at.is_some());
        assert_eq!(attempts[0].error, None);
    }
    t.drop_schema().await.expect("drop");
}

/// get_job follows the Rust claim's rules: priority first, task filter, not before
/// run_at, not from a paused queue, one running job per serial key.
#[tokio::test]
async fn get_job_follows_the_claim_rules() {
    let t = schema().await;
    let s = t.storage();
    let pool = s.pool();
    let low = s.enqueue(NewJob::new("a", json!(1))).await.expect("e").id;
    let mut high = NewJob::new("a", json!(2));
    high.priority = 5;
    let high = s.enqueue(high).await.expect("e").id;
    let other = s.enqueue(NewJob::new("b", json!(3))).await.expect("e").id;
    let mut later = NewJob::new("a", json!(4));
    later.delay = Some(Duration::from_secs(3600));
    let later = s.enqueue(later).await.expect("e").id;
    let mut paused = NewJob::new("a", json!(5));
    paused.queue = "paused_q".into();
    let paused = s.enqueue(paused).await.expect("e").id;
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "INSERT INTO {s}.paused_queues (queue) VALUES ('paused_q')",
    )))
    .execute(pool)
    .await
    .expect("pause");

    let claim = |tasks: Option<&'static [&'static str]>| {
        let schema = t.schema().to_string();
        async move {
            get_job(pool, &schema, "w", tasks, "1 minute")
                .await
                .map(|r| r.get::<i64, _>("id"))
        }
    };
    assert_eq!(claim(Some(&["b"])).await, Some(other));
    assert_eq!(claim(Some(&["a"])).await, Some(high));
    assert_eq!(claim(None).await, Some(low));
    // `later` is not due and the paused queue is skipped.
    assert_eq!(claim(None).await, None);
    t.advance(Duration::from_secs(3601)).await.expect("advance");
    assert_eq!(claim(None).await, Some(later));
    assert_eq!(claim(None).await, None);
    let job = s.get_job(paused).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Pending);

    // Serial keys: the second job of a key waits for the first to finish.
    let mut k1 = NewJob::new("k", json!(1));
    k1.serial_key = Some("key".into());
    let k1 = s.enqueue(k1).await.expect("e").id;
    let mut k2 = NewJob::new("k", json!(2));
    k2.serial_key = Some("key".into());
    let k2 = s.enqueue(k2).await.expect("e").id;
    assert_eq!(claim(None).await, Some(k1));
    assert_eq!(claim(None).await, None);
    complete_job(pool, t.schema(), "w", k1, json!(null))
        .await
        .expect("complete");
    assert_eq!(claim(None).await, Some(k2));
    t.drop_schema().await.expect("drop");
}

/// fail_job retries with a backoff while attempts remain, then fails for good; each
/// attempt is recorded with its error.
#[tokio::test]
async fn fail_job_retries_then_fails_for_good() {
    let t = schema().await;
    let s = t.storage();
    let pool = s.pool();
    let mut job = NewJob::new("flaky", json!({}));
    job.max_attempts = 2;
    let id = s.enqueue(job).await.expect("enqueue").id;

    let row = get_job(pool, t.schema(), "w1", Some(&["flaky"]), "1 minute")
        .await
        .expect("claimed");
    assert_eq!(row.get::<i64, _>("id"), id);
    let before = s.now().await.expect("now");
    fail_job(pool, t.schema(), "w1", id, "boom 1")
        .await
        .expect("fail_job");
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Retrying);
    assert_eq!(job.last_error.as_deref(), Some("boom 1"));
    assert!(job.lease.is_none());
    // least(2^attempt s, 1 h): 2 seconds after the first attempt.
    let delay = job.run_at - before;
    assert!(
        delay >= chrono::Duration::milliseconds(1900) && delay <= chrono::Duration::seconds(3),
        "retry delay {delay}"
    );
    // Not due yet.
    assert!(get_job(pool, t.schema(), "w1", None, "1 minute")
        .await
        .is_none());
    t.advance(Duration::from_secs(3)).await.expect("advance");

    let row = get_job(pool, t.schema(), "w2", None, "1 minute")
        .await
        .expect("claimed again");
    assert_eq!(row.get::<i32, _>("attempt"), 2);
    fail_job(pool, t.schema(), "w2", id, "boom 2")
        .await
        .expect("fail_job");
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.last_error.as_deref(), Some("boom 2"));
    assert!(job.completed_at.is_some());

    let attempts = s.list_attempts(id).await.expect("attempts");
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.worker.as_deref(),
                a.outcome,
                a.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some("w1"), AttemptOutcome::Retrying, Some("boom 1")),
            (2, Some("w2"), AttemptOutcome::Failed, Some("boom 2")),
        ]
    );
    t.drop_schema().await.expect("drop");
}

/// A worker whose lease expired and was reclaimed (and the job claimed by another
/// worker) is refused by complete_job and fail_job with SQLSTATE DJ001, and nothing
/// changes; the new holder then completes the job.
#[tokio::test]
async fn stale_worker_is_refused_and_changes_nothing() {
    let t = schema().await;
    let s = t.storage();
    let pool = s.pool();
    let id = s
        .enqueue(NewJob::new("slow", json!({})))
        .await
        .expect("enqueue")
        .id;
    get_job(pool, t.schema(), "stale", None, "30 seconds")
        .await
        .expect("claimed");

    t.advance(Duration::from_secs(31)).await.expect("advance");
    let released = s.release_stale_locks().await.expect("reclaim");
    assert_eq!(released.released.len(), 1);
    let row = get_job(pool, t.schema(), "fresh", None, "5 minutes")
        .await
        .expect("claimed by the new worker");
    assert_eq!(row.get::<i64, _>("id"), id);
    assert_eq!(row.get::<i32, _>("attempt"), 2);
    let before = s.get_job(id).await.expect("get").expect("exists");
    let history_before = s.list_attempts(id).await.expect("attempts");

    let err = complete_job(pool, t.schema(), "stale", id, json!("late"))
        .await
        .expect_err("stale complete refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("DJ001"), "{err}");
    assert!(err.to_string().contains("lease lost"), "{err}");
    let err = fail_job(pool, t.schema(), "stale", id, "late failure")
        .await
        .expect_err("stale fail refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("DJ001"), "{err}");

    let after = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(after, before);
    assert_eq!(s.list_attempts(id).await.expect("attempts"), history_before);

    // A job that does not exist is another error.
    let err = complete_job(pool, t.schema(), "fresh", id + 1000, json!(null))
        .await
        .expect_err("no such job");
    assert_eq!(sqlstate(&err).as_deref(), Some("P0002"), "{err}");

    // The new holder finishes it; the history shows both attempts.
    complete_job(pool, t.schema(), "fresh", id, json!("ok"))
        .await
        .expect("fresh complete");
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(json!("ok")));
    let summary: Vec<_> = s
        .list_attempts(id)
        .await
        .expect("attempts")
        .iter()
        .map(|a| (a.attempt, a.worker.clone(), a.outcome))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some("stale".to_string()), AttemptOutcome::Reclaimed),
            (2, Some("fresh".to_string()), AttemptOutcome::Completed),
        ]
    );

    // An expired lease that nobody has reclaimed yet is refused too.
    let id2 = s
        .enqueue(NewJob::new("slow", json!({})))
        .await
        .expect("enqueue")
        .id;
    get_job(pool, t.schema(), "late", None, "10 seconds")
        .await
        .expect("claimed");
    t.advance(Duration::from_secs(11)).await.expect("advance");
    let err = complete_job(pool, t.schema(), "late", id2, json!(null))
        .await
        .expect_err("expired lease refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("DJ001"), "{err}");
    assert_eq!(
        s.get_job(id2).await.expect("get").expect("exists").status,
        JobStatus::Running
    );
    t.drop_schema().await.expect("drop");
}

/// A child finished from SQL wakes its waiting parent, like the Rust paths (the
/// `jobs_wake_parent` trigger fires on every final write).
#[tokio::test]
async fn finishing_a_child_from_sql_wakes_its_parent() {
    let t = schema().await;
    let s = t.storage();
    let pool = s.pool();
    let parent = s
        .enqueue(NewJob::new("parent", json!({})))
        .await
        .expect("enqueue")
        .id;
    let mut child = NewJob::new("child", json!({}));
    child.parent_id = Some(parent);
    let child = s.enqueue(child).await.expect("enqueue").id;
    // The parent waits far in the future.
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "UPDATE {s}.jobs SET status = 'waiting', run_at = now() + interval '1 day' WHERE id = $1",
    )))
    .bind(parent)
    .execute(pool)
    .await
    .expect("wait");
    let row = get_job(pool, t.schema(), "w", Some(&["child"]), "1 minute")
        .await
        .expect("claimed");
    assert_eq!(row.get::<i64, _>("id"), child);
    complete_job(pool, t.schema(), "w", child, json!(1))
        .await
        .expect("complete");
    let p = s.get_job(parent).await.expect("get").expect("exists");
    assert!(
        p.run_at <= s.now().await.expect("now"),
        "parent woken: run_at {}",
        p.run_at
    );
    t.drop_schema().await.expect("drop");
}

/// Concurrent SQL workers on their own connections claim every job exactly once, and
/// get_job locks only the job it returns: a transaction holding a claim open leaves the
/// other due jobs to other workers.
#[tokio::test]
async fn concurrent_sql_workers_claim_each_job_once() {
    let t = schema().await;
    let s = t.storage();
    s.enqueue_many((0..40).map(|i| NewJob::new("t", json!(i))).collect())
        .await
        .expect("enqueue");
    let pool = PgPool::connect(t.url()).await.expect("pool");

    // Holding a claim in an open transaction locks just that one job.
    let mut held = pool.begin().await.expect("begin");
    let held_id: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.get_job('holder')",
    )))
    .fetch_one(&mut *held)
    .await
    .expect("held claim");

    let mut workers = Vec::new();
    for w in 0..4 {
        let pool = pool.clone();
        let schema = t.schema().to_string();
        workers.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut mine = Vec::new();
            while let Some(row) = get_job(&pool, &schema, &name, None, "1 minute").await {
                let id: i64 = row.get("id");
                complete_job(&pool, &schema, &name, id, json!(w))
                    .await
                    .expect("complete");
                mine.push(id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), 39);
    assert!(!all.contains(&held_id));
    held.rollback().await.expect("rollback");
    pool.close().await;
    t.drop_schema().await.expect("drop");
}
