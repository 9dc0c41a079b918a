//! Workflow behaviour specific to SQLite: states written by another process (or an older
//! library) are healed by the lease sweep, a child failed by the sweep wakes its parent,
//! and a version 2 file gains workflows on upgrade.

use crate::TempDb;
use durable_jobs::{JobFilter, JobStatus, ManualClock, NewJob, Storage};
use durable_jobs_sqlite::SCHEMA_VERSION;
use rusqlite::Connection;
use serde_json::json;

fn raw(db: &TempDb) -> Connection {
    let conn = Connection::open(db.path()).expect("open a raw connection");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// A parent left waiting (no timer) although its child finished after it suspended, as
/// a crash between two separate writes would leave it: the lease sweep makes it due.
/// A parent whose children finished before it suspended is left alone.
#[tokio::test]
async fn reclaim_heals_a_parent_left_waiting_after_its_child_finished() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let stuck = s
        .enqueue(NewJob::new("t", json!("p1")))
        .await
        .expect("enqueue")
        .id;
    let settled = s
        .enqueue(NewJob::new("t", json!("p2")))
        .await
        .expect("enqueue")
        .id;
    let mut kids = Vec::new();
    for p in [stuck, settled] {
        let mut kid = NewJob::new("t", json!("kid"));
        kid.parent_id = Some(p);
        kids.push(s.enqueue(kid).await.expect("enqueue child").id);
    }
    let now = micros(s.now().await.expect("now"));
    let far = micros(durable_jobs::job::far_future());
    {
        let conn = raw(&db);
        // Both parents suspended at `now`; the stuck one's child finished a second later,
        // the settled one's a second earlier.
        conn.execute(
            "UPDATE durable_jobs SET status = 'waiting', run_at = ?2, updated_at = ?3 WHERE id IN (?1, ?4)",
            rusqlite::params![stuck, far, now, settled],
        )
        .expect("suspend the parents by hand");
        for (kid, at) in [(kids[0], now + 1_000_000), (kids[1], now - 1_000_000)] {
            conn.execute(
                "UPDATE durable_jobs SET status = 'completed', result = '1', completed_at = ?2 WHERE id = ?1",
                rusqlite::params![kid, at],
            )
            .expect("finish a child by hand");
        }
    }
    clock.advance(std::time::Duration::from_secs(5));
    let swept = s.release_stale_locks().await.expect("reclaim");
    assert_eq!(swept.touched(), 1, "only the stuck parent is healed");
    assert_eq!(swept.parents_woken, 1);
    assert!(swept.released.is_empty(), "no lease had expired");
    let p = s.get_job(stuck).await.expect("get").expect("exists");
    assert_eq!(p.status, JobStatus::Waiting);
    let now = micros(s.now().await.expect("now"));
    assert_eq!(micros(p.run_at), now, "due now");
    let q = s.get_job(settled).await.expect("get").expect("exists");
    assert_eq!(micros(q.run_at), far, "left asleep");
    // Healing is idempotent: the healed parent is now newer than its child.
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 0);
    s.close().await;
}

/// The heal looks at one window of waiting jobs per sweep, so its cost stays flat with
/// many sleeping workflows; successive sweeps reach a stuck parent behind a full window.
#[tokio::test]
async fn healing_walks_waiting_jobs_one_window_per_sweep() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let now = micros(s.now().await.expect("now"));
    let far = micros(durable_jobs::job::far_future());
    let (stuck, kid) = {
        let conn = raw(&db);
        conn.execute_batch("BEGIN").expect("begin");
        // 1500 sleeping workflows without children, ahead of the stuck parent.
        for _ in 0..1500 {
            conn.execute(
                "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, \
                 run_at, created_at, updated_at) VALUES ('t', '0', 'default', 0, 'waiting', 1, ?1, ?2, ?2)",
                rusqlite::params![far, now],
            )
            .expect("insert a sleeper");
        }
        conn.execute(
            "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, \
             run_at, created_at, updated_at) VALUES ('t', '0', 'default', 0, 'waiting', 1, ?1, ?2, ?2)",
            rusqlite::params![far, now],
        )
        .expect("insert the stuck parent");
        let stuck = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, \
             run_at, created_at, updated_at, completed_at, parent_id) \
             VALUES ('t', '0', 'default', 0, 'completed', 1, ?1, ?1, ?2, ?2, ?3)",
            rusqlite::params![now, now + 1_000_000, stuck],
        )
        .expect("insert its finished child");
        let kid = conn.last_insert_rowid();
        conn.execute_batch("COMMIT").expect("commit");
        (stuck, kid)
    };
    clock.advance(std::time::Duration::from_secs(5));
    assert_eq!(
        s.release_stale_locks().await.expect("sweep 1").touched(),
        0,
        "first window: sleepers only"
    );
    assert_eq!(
        s.release_stale_locks().await.expect("sweep 2").touched(),
        1,
        "second window holds the parent"
    );
    let p = s.get_job(stuck).await.expect("get").expect("exists");
    assert_eq!(micros(p.run_at), micros(s.now().await.expect("now")));
    assert_eq!(
        s.get_job(kid).await.expect("get").expect("exists").status,
        JobStatus::Completed
    );
    // The next sweeps wrap around and find nothing more to heal.
    for _ in 0..3 {
        assert_eq!(s.release_stale_locks().await.expect("sweep").touched(), 0);
    }
    s.close().await;
}

/// A child whose lease expires on its last attempt is failed by the sweep, and that
/// same write wakes its waiting parent.
#[tokio::test]
async fn child_failed_by_the_sweep_wakes_its_parent() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    let parent = s
        .enqueue(NewJob::new("t", json!("p")))
        .await
        .expect("enqueue")
        .id;
    let mut kid = NewJob::new("t", json!("kid"));
    kid.parent_id = Some(parent);
    kid.max_attempts = 1;
    let kid = s.enqueue(kid).await.expect("enqueue child").id;
    let now = micros(s.now().await.expect("now"));
    let far = micros(durable_jobs::job::far_future());
    {
        let conn = raw(&db);
        conn.execute(
            "UPDATE durable_jobs SET status = 'waiting', run_at = ?2, updated_at = ?3 WHERE id = ?1",
            rusqlite::params![parent, far, now],
        )
        .expect("suspend the parent by hand");
        // The child's worker died holding the lease of its only attempt.
        conn.execute(
            "UPDATE durable_jobs SET status = 'running', attempt = 1, lease_holder = 'dead', \
             lease_token = 7, lease_expires_at = ?2 WHERE id = ?1",
            rusqlite::params![kid, now + 1_000_000],
        )
        .expect("claim the child by hand");
    }
    clock.advance(std::time::Duration::from_secs(2));
    let swept = s.release_stale_locks().await.expect("reclaim");
    assert_eq!(swept.touched(), 1);
    assert_eq!(
        swept.released,
        vec![durable_jobs::ReleasedJob {
            job_id: kid,
            queue: "default".into(),
            task: "t".into(),
            attempt: 1,
            status: JobStatus::Failed,
        }],
        "the child is reported; waking its parent is part of its final write"
    );
    let k = s.get_job(kid).await.expect("get").expect("exists");
    assert_eq!(k.status, JobStatus::Failed);
    let p = s.get_job(parent).await.expect("get").expect("exists");
    let now = micros(s.now().await.expect("now"));
    assert_eq!(micros(p.run_at), now, "parent woken");
    s.close().await;
}

/// A file at version 2 (before workflows) upgrades to the current version: its jobs gain
/// no parent, and take signals and children afterwards.
#[tokio::test]
async fn version_two_file_gains_workflows_on_upgrade() {
    let db = TempDb::fresh();
    {
        let conn = Connection::open(db.path()).expect("create the old file");
        conn.execute_batch(include_str!("../../migrations/0001_jobs.sql"))
            .expect("apply version 1");
        conn.execute_batch(include_str!("../../migrations/0002_checkpoints.sql"))
            .expect("apply version 2");
        conn.execute_batch(
            "CREATE TABLE durable_jobs_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO durable_jobs_migrations VALUES (1, 'jobs', 0), (2, 'checkpoints', 0);
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, run_at, created_at, updated_at)
             VALUES ('t', '{\"old\":true}', 'default', 0, 'pending', 4, 0, 0, 0);",
        )
        .expect("seed a version 2 job");
    }
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);
    let old = s
        .list_jobs(JobFilter::default())
        .await
        .expect("list")
        .pop()
        .expect("the old job survived");
    s.send_signal(old.id, "go", json!(1)).await.expect("signal");
    assert_eq!(
        s.peek_signal(old.id, "go").await.expect("peek"),
        Some(json!(1))
    );
    let mut kid = NewJob::new("t", json!("kid"));
    kid.parent_id = Some(old.id);
    let kid = s.enqueue(kid).await.expect("enqueue child").id;
    let kids: Vec<_> = s
        .list_jobs(JobFilter {
            parent_id: Some(old.id),
            ..JobFilter::default()
        })
        .await
        .expect("list children")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(kids, vec![kid]);
    assert!(s.cancel(old.id).await.expect("cancel"));
    let k = s.get_job(kid).await.expect("get").expect("exists");
    assert_eq!(k.status, JobStatus::Cancelled, "cancel reached the child");
    assert!(s.delete_job(old.id).await.expect("delete"));
    assert_eq!(
        s.peek_signal(old.id, "go").await.expect("peek"),
        None,
        "signals deleted with the job"
    );
    s.close().await;
}
