//! Enqueue in the caller's transaction, and bulk enqueue.

use crate::schema;
use durable_jobs::{JobFilter, NewJob, Storage};
use serde_json::json;
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn enqueue_in_a_rolled_back_transaction_leaves_no_job() {
    let t = schema().await;
    let s = t.storage();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE \"{}\".orders (id bigint PRIMARY KEY)",
        t.schema()
    )))
    .execute(s.pool())
    .await
    .expect("create orders");

    let mut tx = s.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{}\".orders VALUES (1)",
        t.schema()
    )))
    .execute(&mut *tx)
    .await
    .expect("business write");
    let rolled = s
        .enqueue_in_tx(&mut tx, NewJob::new("ship", json!({"order": 1})))
        .await
        .expect("enqueue in tx");
    // Outside the transaction the job is not visible yet.
    assert!(s.get_job(rolled.id).await.expect("get").is_none());
    tx.rollback().await.expect("rollback");
    assert!(s.get_job(rolled.id).await.expect("get").is_none());
    assert!(s
        .list_jobs(JobFilter::default())
        .await
        .expect("list")
        .is_empty());

    let mut tx = s.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{}\".orders VALUES (2)",
        t.schema()
    )))
    .execute(&mut *tx)
    .await
    .expect("business write");
    let kept = s
        .enqueue_many_in_tx(
            &mut tx,
            vec![
                NewJob::new("ship", json!({"order": 2})),
                NewJob::new("bill", json!({"order": 2})),
            ],
        )
        .await
        .expect("enqueue many in tx");
    tx.commit().await.expect("commit");
    let jobs = s.list_jobs(JobFilter::default()).await.expect("list");
    assert_eq!(
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        kept.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(jobs[0].payload, json!({"order": 2}));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn bulk_enqueue_of_ten_thousand_jobs_is_one_statement_with_dedupe() {
    let t = schema().await;
    let s = t.storage();
    let existing = {
        let mut j = NewJob::new("t", json!("existing"));
        j.dedupe_key = Some("k-7".into());
        s.enqueue(j).await.expect("enqueue").id
    };
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|i| {
            let mut j = NewJob::new("t", json!({ "i": i }));
            // Every 1000th job carries one of ten keys; each key appears ten times.
            if i % 100 == 0 {
                j.dedupe_key = Some(format!("k-{}", (i / 100) % 10));
            }
            j
        })
        .collect();
    let out = s.enqueue_many(jobs).await.expect("enqueue_many");
    assert_eq!(out.len(), 10_000);
    let created = out.iter().filter(|e| e.created).count();
    // 9,900 unkeyed + 10 keys, of which k-7 already existed.
    assert_eq!(created, 9_900 + 9);
    assert_eq!(out[700].id, existing);
    assert!(!out[700].created);
    // Later occurrences of a key map to its first occurrence.
    assert_eq!(out[1_100].id, out[100].id);
    assert!(out[100].created && !out[1_100].created);
    let ids: Vec<i64> = out.iter().filter(|e| e.created).map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids follow input order"
    );
    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 9_910);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn concurrent_enqueues_with_one_dedupe_key_yield_one_job() {
    let t = schema().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = t.storage().clone();
        tasks.push(tokio::spawn(async move {
            let mut j = NewJob::new("t", json!(i));
            j.dedupe_key = Some("only-one".into());
            s.enqueue(j).await
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for task in tasks {
        let e = task.await.expect("task").expect("enqueue");
        ids.push(e.id);
        created += usize::from(e.created);
    }
    assert_eq!(created, 1);
    assert!(ids.iter().all(|&id| id == ids[0]));
    t.drop_schema().await.expect("drop");
}

/// Every insert path stores the job's trace context: in the caller's transaction, a keyed
/// batch, a plain batch of mixed options, a replace-mode keyed job (which takes the
/// replacing enqueue's context), and the jobs a schedule's tick enqueues.
#[tokio::test]
async fn every_insert_path_stores_the_trace_context() {
    use durable_jobs::{AdvanceScheduleParams, KeyMode};
    let t = schema().await;
    let s = t.storage();
    let traced = |task: &str, tp: &str| {
        let mut j = NewJob::new(task, json!(tp));
        j.trace_context = Some(tp.to_string());
        j
    };
    let trace_of = |id: i64| async move {
        s.get_job(id)
            .await
            .expect("get")
            .expect("stored")
            .trace_context
    };

    let mut tx = s.pool().begin().await.expect("begin");
    let in_tx = s
        .enqueue_in_tx(&mut tx, traced("t", "00-a-1-01"))
        .await
        .expect("enqueue in tx")
        .id;
    tx.commit().await.expect("commit");
    assert_eq!(trace_of(in_tx).await.as_deref(), Some("00-a-1-01"));

    // Keyed: the general bulk statement.
    let mut keyed = traced("t", "00-b-1-01");
    keyed.dedupe_key = Some("k".into());
    let mut tagged = traced("t", "00-b-2-01");
    tagged.tags = vec!["x".into()];
    let out = s
        .enqueue_many(vec![keyed, tagged, NewJob::new("t", json!(0))])
        .await
        .expect("keyed batch");
    assert_eq!(trace_of(out[0].id).await.as_deref(), Some("00-b-1-01"));
    assert_eq!(trace_of(out[1].id).await.as_deref(), Some("00-b-2-01"));
    assert_eq!(trace_of(out[2].id).await, None);

    // Plain but not uniform: one array per column.
    let out = s
        .enqueue_many(vec![
            traced("t", "00-c-1-01"),
            traced("t", "00-c-2-01"),
            NewJob::new("t", json!(0)),
        ])
        .await
        .expect("plain batch");
    assert_eq!(trace_of(out[0].id).await.as_deref(), Some("00-c-1-01"));
    assert_eq!(trace_of(out[1].id).await.as_deref(), Some("00-c-2-01"));
    assert_eq!(trace_of(out[2].id).await, None);

    // Replace mode: created with its context, then replaced with the next one's.
    let mut first = traced("t", "00-d-1-01");
    first.dedupe_key = Some("r".into());
    first.key_mode = KeyMode::Replace;
    let mut second = first.clone();
    second.trace_context = Some("00-d-2-01".into());
    let a = s.enqueue(first).await.expect("replace 1");
    assert!(a.created);
    assert_eq!(trace_of(a.id).await.as_deref(), Some("00-d-1-01"));
    let b = s.enqueue(second).await.expect("replace 2");
    assert_eq!((b.id, b.created), (a.id, false));
    assert_eq!(trace_of(a.id).await.as_deref(), Some("00-d-2-01"));

    // A schedule's tick.
    let now = s.now().await.expect("now");
    s.upsert_schedule("every", json!({}), now)
        .await
        .expect("schedule");
    let ids = s
        .advance_schedule(AdvanceScheduleParams {
            name: "every",
            from: now,
            to: now + chrono::Duration::minutes(1),
            jobs: vec![traced("t", "00-e-1-01")],
        })
        .await
        .expect("advance")
        .expect("moved");
    assert_eq!(trace_of(ids[0]).await.as_deref(), Some("00-e-1-01"));
    t.drop_schema().await.expect("drop");
}
