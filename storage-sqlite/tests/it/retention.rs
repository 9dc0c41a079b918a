//! The SQLite purge runs in steps, each its own transaction on the writer's background
//! lane: what a failing step does to the steps before it.

use crate::TempDb;
use durable_jobs::{
    Completion, DequeueParams, JobId, ManualClock, NewJob, RetentionPolicy, Storage,
};
use durable_jobs_sqlite::SqliteStorage;
use rusqlite::Connection;
use serde_json::json;
use std::time::Duration;

/// The purge's step (`retention::STEP` in the crate): the tests below place a failing
/// job in the first or the second step by finishing the steps' jobs at different times.
const STEP: usize = 100;

/// Enqueues, claims and completes `n` jobs at the clock's present time.
async fn completed(s: &SqliteStorage, n: usize) -> Vec<JobId> {
    let jobs = (0..n).map(|i| NewJob::new("t", json!(i))).collect();
    s.enqueue_many(jobs).await.expect("enqueue_many");
    let claimed = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: n,
            lease_duration: Duration::from_secs(30),
            holder: "test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue");
    assert_eq!(claimed.len(), n, "all {n} jobs are due");
    let ids = claimed.iter().map(|c| c.job.id).collect();
    let items = claimed
        .into_iter()
        .map(|c| Completion {
            lease: c.lease,
            result: json!("ok"),
        })
        .collect();
    for r in s.complete_many(items).await.expect("complete_many") {
        r.expect("completion");
    }
    ids
}

/// A trigger that makes deleting job `id` fail, as a constraint or a full disk would.
fn refuse_deleting(db: &TempDb, id: JobId) {
    let conn = Connection::open(db.path()).expect("open raw");
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse_delete BEFORE DELETE ON durable_jobs WHEN old.id = {id}
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
    ))
    .expect("create the trigger");
}

fn allow_deleting(db: &TempDb) {
    let conn = Connection::open(db.path()).expect("open raw");
    conn.execute_batch("DROP TRIGGER refuse_delete")
        .expect("drop the trigger");
}

async fn exists(s: &SqliteStorage, id: JobId) -> bool {
    s.get_job(id).await.expect("get_job").is_some()
}

/// Two steps' worth of finished jobs, the first step's finished a minute before the
/// second's, both past the default retention.
async fn two_steps(s: &SqliteStorage, clock: &ManualClock) -> (Vec<JobId>, Vec<JobId>) {
    let first = completed(s, STEP).await;
    clock.advance(Duration::from_secs(60));
    let second = completed(s, 50).await;
    clock.advance(Duration::from_secs(3 * 24 * 3600));
    (first, second)
}

/// A step that fails after earlier steps committed: the pass reports what the committed
/// steps deleted, the failed step deletes nothing, and the next pass (once the cause is
/// gone) deletes the rest.
#[tokio::test]
async fn a_failing_later_step_reports_what_the_earlier_steps_deleted() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let (first, second) = two_steps(&s, &clock).await;
    refuse_deleting(&db, second[20]);

    let batch = RetentionPolicy::default().batch(s.now().await.expect("now"), 1000);
    let p = s
        .purge_retained(batch)
        .await
        .expect("the first step committed");
    assert_eq!((p.roots, p.completed), (STEP as u64, STEP as u64));
    for id in &first {
        assert!(!exists(&s, *id).await, "job {id} of the first step is gone");
    }
    for id in &second {
        assert!(exists(&s, *id).await, "job {id} of the failed step stays");
    }

    allow_deleting(&db);
    let p = s.purge_retained(batch).await.expect("the next pass");
    assert_eq!((p.roots, p.completed), (50, 50));
    for id in &second {
        assert!(!exists(&s, *id).await, "job {id} is gone");
    }
}

/// A first step that fails is the pass's error: nothing was deleted to report.
#[tokio::test]
async fn a_failing_first_step_is_the_pass_s_error() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let (first, second) = two_steps(&s, &clock).await;
    refuse_deleting(&db, first[7]);

    let batch = RetentionPolicy::default().batch(s.now().await.expect("now"), 1000);
    let err = s
        .purge_retained(batch)
        .await
        .expect_err("the first step failed");
    assert!(
        err.to_string().contains("refused by the test"),
        "the cause is in the error: {err}"
    );
    for id in first.iter().chain(&second) {
        assert!(exists(&s, *id).await, "job {id} stays");
    }
}
