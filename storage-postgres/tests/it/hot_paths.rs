//! The hot paths' lean statements: plain bulk enqueue, batch completion, the claim's commit
//! mode, and the retention batch's cross-process lock.

use crate::schema;
use chrono::{Duration as ChronoDuration, Utc};
use durable_jobs::{Completion, DequeueParams, Error, JobStatus, NewJob, Storage};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_postgres::PostgresOptions;
use serde_json::json;
use std::time::Duration;

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: Vec::new(),
        limit,
        lease_duration: Duration::from_secs(60),
        holder: "hot_paths".into(),
        forbidden_flags: Vec::new(),
    }
}

/// How many stored jobs have `parent` as their parent, and how many carry a serial key.
async fn children_and_keyed(t: &TestSchema, parent: i64) -> (i64, i64) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE parent_id = $1), count(serial_key) FROM \"{}\".jobs",
        t.schema()
    )))
    .bind(parent)
    .fetch_one(t.storage().pool())
    .await
    .expect("columns")
}

/// A plain batch whose jobs differ only in their payload (what `enqueue_many` with one
/// set of options sends) binds the shared columns once: every job still gets them all,
/// in input order, including a delay computed from the database clock.
#[tokio::test]
async fn uniform_bulk_enqueue_stores_the_shared_columns_on_every_job() {
    let t = schema().await;
    let s = t.storage();
    let parent = s
        .enqueue(NewJob::new("p", json!("parent")))
        .await
        .expect("parent")
        .id;
    let template = |i: usize| {
        let mut j = NewJob::new("uniform", json!({ "i": i, "s": "é\"\\" }));
        j.queue = "other".into();
        j.priority = -3;
        j.delay = Some(Duration::from_secs(600));
        j.parent_id = Some(parent);
        j.serial_key = Some("sk".into());
        j.timeout_ms = Some(4_321);
        j.max_attempts = 2;
        j
    };
    let before = s.now().await.expect("now");
    let out = s
        .enqueue_many((0..2_500).map(template).collect())
        .await
        .expect("enqueue_many");
    assert_eq!(out.len(), 2_500);
    assert!(out.iter().all(|e| e.created));
    assert!(out.windows(2).all(|w| w[0].id < w[1].id), "input order");
    for (i, e) in out.iter().enumerate().step_by(11) {
        let j = s.get_job(e.id).await.expect("get").expect("stored");
        assert_eq!(j.payload, json!({ "i": i, "s": "é\"\\" }), "job {i}");
        assert_eq!(j.task, "uniform");
        assert_eq!(j.queue, "other");
        assert_eq!(j.priority, -3);
        assert!(j.run_at >= before + ChronoDuration::seconds(600));
        assert!(j.run_at < before + ChronoDuration::seconds(660));
        assert_eq!(j.timeout_ms, Some(4_321));
        assert_eq!(j.max_attempts, 2);
        assert_eq!(j.status, JobStatus::Pending);
        assert_eq!(j.parent_id, Some(parent));
        assert_eq!(j.serial_key.as_deref(), Some("sk"));
    }
    // Parent and serial key reach their columns.
    assert_eq!(children_and_keyed(&t, parent).await, (2_500, 2_500));
    // A fixed run_at shared by the batch is stored as given.
    let at = Utc::now() + ChronoDuration::hours(5);
    let fixed: Vec<NewJob> = (0..3)
        .map(|i| {
            let mut j = NewJob::new("uniform", json!(i));
            j.run_at = Some(at);
            j
        })
        .collect();
    for e in s.enqueue_many(fixed).await.expect("fixed") {
        let j = s.get_job(e.id).await.expect("get").expect("stored");
        assert_eq!(j.run_at.timestamp_micros(), at.timestamp_micros());
    }
    t.drop_schema().await.expect("drop");
}

/// A plain batch (no keys, flags or tags) takes the lean insert: every job is created,
/// ids follow input order, and every column a plain job may set is stored.
#[tokio::test]
async fn plain_bulk_enqueue_keeps_input_order_and_every_column() {
    let t = schema().await;
    let s = t.storage();
    let parent = s
        .enqueue(NewJob::new("p", json!("parent")))
        .await
        .expect("parent")
        .id;
    let at = Utc::now() + ChronoDuration::hours(3);
    let jobs: Vec<NewJob> = (0..3_000)
        .map(|i| {
            let mut j = NewJob::new(format!("t{}", i % 3), json!({ "i": i, "s": "é\"\\" }));
            match i % 5 {
                0 => j.queue = "other".into(),
                1 => j.priority = 7,
                2 => j.run_at = Some(at),
                3 => j.delay = Some(Duration::from_secs(3_600)),
                _ => {
                    j.parent_id = Some(parent);
                    j.serial_key = Some(format!("sk-{}", i % 4));
                    j.timeout_ms = Some(1_234);
                    j.max_attempts = 9;
                }
            }
            j
        })
        .collect();
    let before = s.now().await.expect("now");
    let out = s.enqueue_many(jobs).await.expect("enqueue_many");
    assert_eq!(out.len(), 3_000);
    assert!(out.iter().all(|e| e.created));
    assert!(
        out.windows(2).all(|w| w[0].id < w[1].id),
        "ids follow input order"
    );
    for (i, e) in out.iter().enumerate().step_by(7) {
        let j = s.get_job(e.id).await.expect("get").expect("stored");
        assert_eq!(j.payload, json!({ "i": i, "s": "é\"\\" }), "job {i}");
        assert_eq!(j.task, format!("t{}", i % 3));
        assert_eq!(j.status, JobStatus::Pending);
        assert_eq!(j.queue, if i % 5 == 0 { "other" } else { "default" });
        assert_eq!(j.priority, if i % 5 == 1 { 7 } else { 0 });
        match i % 5 {
            2 => assert_eq!(j.run_at.timestamp_micros(), at.timestamp_micros()),
            3 => assert!(j.run_at >= before + ChronoDuration::seconds(3_600)),
            _ => assert!(j.run_at < before + ChronoDuration::seconds(60)),
        }
        let odd = i % 5 == 4;
        assert_eq!(j.timeout_ms, odd.then_some(1_234));
        assert_eq!(
            j.max_attempts,
            if odd {
                9
            } else {
                NewJob::new("x", json!(0)).max_attempts
            }
        );
    }
    // Parent and serial key reach their columns.
    assert_eq!(children_and_keyed(&t, parent).await, (600, 600));
    t.drop_schema().await.expect("drop");
}

/// A large batch completes every held lease and fences the rest: a cancelled job, a
/// stale token, and a second item for an id already in the batch all report LeaseLost.
#[tokio::test]
async fn complete_many_large_batch_fences_each_item() {
    let t = schema().await;
    let s = t.storage();
    let jobs: Vec<NewJob> = (0..1_200).map(|i| NewJob::new("t", json!(i))).collect();
    s.enqueue_many(jobs).await.expect("enqueue");
    let claimed = s.dequeue(params(1_200)).await.expect("dequeue");
    assert_eq!(claimed.len(), 1_200);
    assert!(s.cancel(claimed[5].job.id).await.expect("cancel"));
    let mut items: Vec<Completion> = claimed
        .iter()
        .map(|c| Completion {
            lease: c.lease.clone(),
            result: json!({ "done": c.job.id, "q": "\"" }),
        })
        .collect();
    let mut stale = claimed[9].lease.clone();
    stale.token = stale.token.wrapping_add(1);
    // A stale token first: the id's first item is the one tried, so the real lease that
    // follows in the same batch is refused too and the job stays running.
    items.insert(
        9,
        Completion {
            lease: stale,
            result: json!("stale"),
        },
    );
    items.push(Completion {
        lease: claimed[0].lease.clone(),
        result: json!("again"),
    });
    let out = s.complete_many(items).await.expect("complete_many");
    assert_eq!(out.len(), 1_202);
    let lost: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(Error::LeaseLost { .. })))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(lost, vec![5, 9, 10, 1_201]);
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 1_198);
    for (i, c) in claimed.iter().enumerate() {
        let j = s.get_job(c.job.id).await.expect("get").expect("job");
        match i {
            5 => assert_eq!(j.status, JobStatus::Cancelled),
            9 => assert_eq!(j.status, JobStatus::Running),
            _ => {
                assert_eq!(j.status, JobStatus::Completed, "job {i}");
                assert_eq!(j.result, Some(json!({ "done": c.job.id, "q": "\"" })));
                assert!(j.lease.is_none());
            }
        }
    }
    t.drop_schema().await.expect("drop");
}

/// A claim commits without waiting for the WAL flush for its own transaction only: the
/// pooled connection it ran on is back on the server's setting for the next statement,
/// so the application's writes on a shared pool keep their durability.
#[tokio::test]
async fn claim_relaxes_synchronous_commit_for_its_own_transaction_only() {
    let t = TestSchema::with_options(PostgresOptions::new().max_connections(1))
        .await
        .expect("schema");
    let s = t.storage();
    let show = || async {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(s.pool())
            .await
            .expect("show")
    };
    let server = show().await;
    s.enqueue_many((0..3).map(|i| NewJob::new("t", json!(i))).collect())
        .await
        .expect("enqueue");
    assert_eq!(s.dequeue(params(10)).await.expect("claim").len(), 3);
    // One connection in the pool: this runs where the claim ran.
    assert_eq!(show().await, server);
    t.drop_schema().await.expect("drop");
}

/// A retention batch that meets the retention lock held (by another process's batch:
/// here a transaction holding the same transaction-scoped advisory lock) deletes nothing
/// and says it was busy; once that transaction ends, the next batch runs. The lock is
/// transaction-scoped, so it can never outlive its batch on a pooled connection.
#[tokio::test]
async fn retention_batch_is_busy_while_another_holds_the_lock() {
    let t = schema().await;
    let s = t.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let c = s.dequeue(params(1)).await.expect("dequeue").remove(0);
    s.complete(&c.lease, json!(null)).await.expect("complete");
    let batch = durable_jobs::RetentionPolicy::keep_forever()
        .completed(Some(Duration::ZERO))
        .batch(s.now().await.expect("now") + ChronoDuration::seconds(1), 10);
    let mut other = s.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("durable_jobs.retention:{}", t.schema()))
        .execute(&mut *other)
        .await
        .expect("lock");
    let p = s.purge_retained(batch).await.expect("purge");
    assert!(p.busy, "{p:?}");
    assert_eq!(p.jobs(), 0);
    assert!(s.get_job(id).await.expect("get").is_some());
    other.rollback().await.expect("rollback");
    let p = s.purge_retained(batch).await.expect("purge");
    assert!(!p.busy);
    assert_eq!((p.roots, p.completed), (1, 1));
    assert!(s.get_job(id).await.expect("get").is_none());
    t.drop_schema().await.expect("drop");
}
