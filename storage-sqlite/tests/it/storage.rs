//! Behaviour specific to the SQLite backend: durability across reopen, reads during a
//! held write lock, busy retries, coalesced writes, several storages on one file.

use crate::TempDb;
use durable_jobs::{
    ClaimedJob, DequeueParams, Error, JobFilter, JobStatus, ManualClock, NewJob, Storage,
    StorageErrorKind,
};
use durable_jobs_sqlite::{SqliteOptions, SqliteStorage};
use rusqlite::Connection;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: Duration::from_secs(30),
        holder: "test".into(),
        forbidden_flags: Vec::new(),
    }
}

fn jobs(n: usize) -> Vec<NewJob> {
    (0..n).map(|i| NewJob::new("t", json!(i))).collect()
}

#[tokio::test]
async fn jobs_survive_close_and_reopen() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let ids = s.enqueue_many(jobs(3)).await.expect("enqueue");
    let c = s.dequeue(params(1)).await.expect("claim");
    s.complete(&c[0].lease, json!({"r": 1}))
        .await
        .expect("complete");
    s.close().await;
    assert!(matches!(s.get_job(ids[0].id).await, Err(Error::Shutdown)));
    assert!(matches!(
        s.enqueue(NewJob::new("t", json!(0))).await,
        Err(Error::Shutdown)
    ));

    let s = db.open(&clock).await;
    let done = s.get_job(ids[0].id).await.expect("get").expect("exists");
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result, Some(json!({"r": 1})));
    assert_eq!(s.dequeue(params(10)).await.expect("claim").len(), 2);
    s.close().await;
}

/// Holds the file's write lock from a raw connection, as another process would.
fn lock_writes(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("open raw");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_another_connection_holds_the_write_lock() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let id = s
        .enqueue(NewJob::new("t", json!("x")))
        .await
        .expect("enqueue")
        .id;
    let lock = lock_writes(&db.path());
    let job = s
        .get_job(id)
        .await
        .expect("read during the lock")
        .expect("exists");
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(s.counts().await.expect("counts").len(), 1);
    lock.execute_batch("ROLLBACK").expect("release");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_database_is_retried_not_surfaced() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    // A tiny busy timeout makes SQLite return SQLITE_BUSY almost at once, so the
    // backend's own retry loop is what carries the write through.
    let s = SqliteStorage::open_with(
        db.path(),
        SqliteOptions::new()
            .manual_clock(clock.clone())
            .busy_timeout(Duration::from_millis(5)),
    )
    .await
    .expect("open");
    let lock = lock_writes(&db.path());
    let s2 = s.clone();
    let mut write = tokio::spawn(async move { s2.enqueue(NewJob::new("t", json!(1))).await });
    // The write cannot finish while the lock is held.
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut write)
        .await
        .is_err());
    lock.execute_batch("COMMIT").expect("release the lock");
    let e = write
        .await
        .expect("task")
        .expect("the write went through after the lock");
    assert!(e.created);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_past_the_retry_limit_is_a_typed_error() {
    let db = TempDb::fresh();
    let s = SqliteStorage::open_with(
        db.path(),
        SqliteOptions::new()
            .busy_timeout(Duration::from_millis(5))
            .busy_retry_for(Duration::from_millis(50)),
    )
    .await
    .expect("open");
    let lock = lock_writes(&db.path());
    match s.enqueue(NewJob::new("t", json!(1))).await {
        Err(Error::Storage(e)) => {
            assert_eq!(e.kind(), StorageErrorKind::Busy, "{e}");
            assert!(e.to_string().contains("locked"), "message: {e}");
            let source = std::error::Error::source(&e).expect("the driver error is kept");
            let sqlite = source
                .downcast_ref::<rusqlite::Error>()
                .expect("a rusqlite error");
            assert_eq!(
                sqlite.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy)
            );
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    lock.execute_batch("ROLLBACK").expect("release");
    // The storage recovers once the lock is gone.
    s.enqueue(NewJob::new("t", json!(2)))
        .await
        .expect("enqueue after the lock");
    s.close().await;
}

/// Many concurrent writes, coalesced by the writer into shared transactions: a stale
/// lease among them fails alone and the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_writes_keep_their_own_outcomes() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    s.enqueue_many(jobs(200)).await.expect("enqueue");
    let claimed: Vec<ClaimedJob> = s.dequeue(params(200)).await.expect("claim");
    assert_eq!(claimed.len(), 200);
    // Cancel every third job: its lease is no longer current.
    for c in claimed.iter().step_by(3) {
        assert!(s.cancel(c.job.id).await.expect("cancel"));
    }
    let mut tasks = Vec::new();
    for (i, c) in claimed.iter().enumerate() {
        let s = s.clone();
        let lease = c.lease.clone();
        tasks.push(tokio::spawn(async move {
            (i, s.complete(&lease, json!(i)).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("task");
        if i % 3 == 0 {
            assert!(matches!(r, Err(Error::LeaseLost { .. })), "item {i}: {r:?}");
        } else {
            r.unwrap_or_else(|e| panic!("item {i}: {e}"));
        }
    }
    for (i, c) in claimed.iter().enumerate() {
        let j = s.get_job(c.job.id).await.expect("get").expect("exists");
        if i % 3 == 0 {
            assert_eq!(j.status, JobStatus::Cancelled);
            assert_eq!(j.result, None);
        } else {
            assert_eq!(j.status, JobStatus::Completed);
            assert_eq!(j.result, Some(json!(i)));
        }
    }
    s.close().await;
}

/// Two storages on one file (two write connections competing for the lock, as two
/// processes do) never claim a job twice and claim them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_storages_on_one_file_never_claim_a_job_twice() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let a = db.open(&clock).await;
    let b = db.open(&clock).await;
    let n = 2000;
    a.enqueue_many(jobs(n)).await.expect("enqueue");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.dequeue(params(25)).await.expect("dequeue");
                if got.is_empty() {
                    break;
                }
                for c in &got {
                    mine.push(c.job.id);
                }
                let done = s
                    .complete_many(
                        got.into_iter()
                            .map(|c| durable_jobs::Completion {
                                lease: c.lease,
                                result: json!(null),
                            })
                            .collect(),
                    )
                    .await
                    .expect("complete_many");
                assert!(done.iter().all(|r| r.is_ok()));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("task") {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), n);
    let counts = b.counts().await.expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].status, counts[0].count),
        (JobStatus::Completed, n as u64)
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn wakeups_fire_on_enqueue_and_clock_moves() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let mut rx = s.wakeups().expect("sqlite has local wakeups");
    rx.borrow_and_update();
    s.enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("woken by enqueue")
        .expect("sender alive");
    clock.advance(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("woken by the clock")
        .expect("sender alive");
    s.close().await;
}

#[tokio::test]
async fn in_memory_databases_are_separate_and_not_durable() {
    let a = SqliteStorage::open_in_memory().await.expect("open a");
    let b = SqliteStorage::open_in_memory().await.expect("open b");
    a.enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    assert_eq!(a.counts().await.expect("counts").len(), 1);
    assert!(b.counts().await.expect("counts").is_empty());
    let caps = a.capabilities();
    assert!(!caps.durable && !caps.multi_process);
    assert!(a.path().is_none());
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn invalid_options_are_refused_at_open() {
    let r = SqliteStorage::open_in_memory_with(SqliteOptions::new().max_write_batch(0)).await;
    assert!(matches!(
        r,
        Err(Error::InvalidOption {
            option: "max_write_batch",
            ..
        })
    ));
}

/// A commit through another connection to the file (as another process makes) wakes this
/// storage's workers, without any write on this side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_another_connection_wake_workers() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let other = db.open(&clock).await;
    let s = db.open(&clock).await;
    assert!(s.capabilities().cross_process_wakeup);
    let mut rx = s.wakeups().expect("wakeups");
    rx.borrow_and_update();
    other
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue elsewhere");
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("woken by the other connection's commit")
        .expect("sender alive");
    s.close().await;
    other.close().await;

    let quiet = SqliteStorage::open_with(db.path(), SqliteOptions::new().watch_interval(None))
        .await
        .expect("open without a watcher");
    assert!(!quiet.capabilities().cross_process_wakeup);
    quiet.close().await;
}

/// Rows another tool wrote that this version cannot read (an unknown status, a payload
/// that is not JSON) are typed `Corrupt` errors on every read that returns them, and the
/// rest of the table stays readable. Counts, read from the indexes of the known
/// statuses, leave the row of an unknown status out rather than scan the table for it.
#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let ids = s.enqueue_many(jobs(3)).await.expect("enqueue");
    {
        let conn = Connection::open(db.path()).expect("open raw");
        conn.execute(
            "UPDATE durable_jobs SET status = 'exploded' WHERE id = ?1",
            [ids[0].id],
        )
        .expect("write an unknown status");
        conn.execute(
            "UPDATE durable_jobs SET payload = '{not json' WHERE id = ?1",
            [ids[1].id],
        )
        .expect("write a broken payload");
    }
    for (id, needle) in [(ids[0].id, "exploded"), (ids[1].id, "payload")] {
        let e = s.get_job(id).await.expect_err("undecodable row");
        assert_eq!(e.storage_kind(), Some(StorageErrorKind::Corrupt), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!e.is_transient());
    }
    let e = s
        .list_jobs(JobFilter::default())
        .await
        .expect_err("a listing meets the unknown status");
    assert_eq!(e.storage_kind(), Some(StorageErrorKind::Corrupt), "{e}");
    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(
        (counts[0].status, counts[0].count),
        (JobStatus::Pending, 2),
        "the two pending rows; the unknown status is no status"
    );
    let fine = s.get_job(ids[2].id).await.expect("get").expect("exists");
    assert_eq!(fine.status, JobStatus::Pending);
    s.close().await;
}

/// Tables dropped from under the storage (or a file whose tables another tool removed)
/// give a `Schema` error that says to migrate; migrating again does not recreate them
/// (the file records its version), so the message names the cause.
#[tokio::test]
async fn missing_tables_are_a_schema_error() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    {
        let conn = Connection::open(db.path()).expect("open raw");
        conn.execute_batch("DROP TABLE durable_jobs_workers")
            .expect("drop the worker registry");
    }
    let e = s.list_workers().await.expect_err("no table");
    assert_eq!(e.storage_kind(), Some(StorageErrorKind::Schema), "{e}");
    assert!(e.to_string().contains("migrate()"), "{e}");
    let e = s.touch_worker("w").await.expect_err("no table");
    assert_eq!(e.storage_kind(), Some(StorageErrorKind::Schema), "{e}");
    s.close().await;
}

/// A claimed row that does not decode (a payload or flags that are not JSON, written by
/// another tool) fails alone inside the claim: the claim returns the good jobs, the
/// corrupt ones end failed with a last_error that says why, and no claim meets them
/// again, so a worker never loops on them.
#[tokio::test]
async fn corrupt_rows_fail_instead_of_blocking_the_claim() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let ids: Vec<i64> = s
        .enqueue_many(jobs(4))
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    {
        let conn = Connection::open(db.path()).expect("open raw");
        conn.execute(
            "UPDATE durable_jobs SET payload = '{not json' WHERE id = ?1",
            [ids[1]],
        )
        .expect("write a broken payload");
        conn.execute(
            "UPDATE durable_jobs SET flags = '[not json' WHERE id = ?1",
            [ids[2]],
        )
        .expect("write broken flags");
    }
    let mut p = params(10);
    // The flag check reads the broken flags too: it must not fail the claim either.
    p.forbidden_flags = vec!["gpu".into()];
    let claimed = s.dequeue(p.clone()).await.expect("the claim goes on");
    let got: Vec<i64> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(got, [ids[0], ids[3]], "the good jobs, in claim order");

    let conn = Connection::open(db.path()).expect("open raw");
    for (id, needle) in [(ids[1], "payload"), (ids[2], "flags")] {
        let (status, error, completed, holder, token): (
            String,
            String,
            Option<i64>,
            Option<String>,
            Option<i64>,
        ) = conn
            .query_row(
                "SELECT status, last_error, completed_at, lease_holder, lease_token \
                 FROM durable_jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("read the raw row");
        assert_eq!(status, "failed");
        assert!(
            error.contains("could not be read") && error.contains(needle),
            "last_error: {error}"
        );
        assert!(completed.is_some(), "it finished");
        assert_eq!((holder, token), (None, None), "no lease left");
        let history = s.list_attempts(id).await.expect("attempts");
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].attempt, 1);
        assert_eq!(history[0].worker.as_deref(), Some("test"));
        assert_eq!(history[0].outcome, durable_jobs::AttemptOutcome::Failed);
        assert_eq!(history[0].error.as_deref(), Some(error.as_str()));
        // Reading the job itself still reports the corruption, for an operator to see.
        let e = s.get_job(id).await.expect_err("still undecodable");
        assert_eq!(e.storage_kind(), Some(StorageErrorKind::Corrupt), "{e}");
    }
    assert!(
        s.dequeue(p).await.expect("claim again").is_empty(),
        "the corrupt jobs are not claimed again"
    );
    let failed: u64 = s
        .counts()
        .await
        .expect("counts")
        .iter()
        .filter(|c| c.status == JobStatus::Failed)
        .map(|c| c.count)
        .sum();
    assert_eq!(failed, 2);
    // The operator deletes them.
    for id in [ids[1], ids[2]] {
        assert!(s.delete_job(id).await.expect("delete"));
    }
    s.close().await;
}
