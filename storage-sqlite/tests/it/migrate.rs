//! Schema migrations: upgrading old files, refusing newer ones, rejecting non-databases.

use crate::TempDb;
use durable_jobs::{
    DequeueParams, Error, JobStatus, ManualClock, NewJob, Storage, StorageErrorKind, WorkerQueue,
    WorkerRecord,
};
use durable_jobs_sqlite::{SqliteStorage, SCHEMA_VERSION};
use rusqlite::Connection;
use serde_json::json;
use std::time::Duration;

fn migration_rows(path: &std::path::Path) -> Vec<(i64, String)> {
    let conn = Connection::open(path).expect("open raw connection");
    let mut stmt = conn
        .prepare("SELECT version, name FROM durable_jobs_migrations ORDER BY version")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test]
async fn fresh_file_records_every_migration_once() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);
    s.migrate().await.expect("migrating again is a no-op");
    s.close().await;
    let reopened = db.open(&clock).await;
    reopened.close().await;
    let rows = migration_rows(&db.path());
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

/// A file left at version 1 (jobs only, as an older release wrote it) is upgraded on
/// open, keeping its jobs, which then run through the features the upgrade added.
#[tokio::test]
async fn version_one_file_is_upgraded_on_open() {
    let db = TempDb::fresh();
    {
        let conn = Connection::open(db.path()).expect("create the old file");
        conn.execute_batch(include_str!("../../migrations/0001_jobs.sql"))
            .expect("apply version 1");
        conn.execute_batch(
            "CREATE TABLE durable_jobs_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO durable_jobs_migrations VALUES (1, 'jobs', 0);
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, run_at, created_at, updated_at)
             VALUES ('t', '{\"old\":true}', 'default', 0, 'pending', 4, 0, 0, 0);",
        )
        .expect("seed a version 1 job");
    }
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);
    let claimed = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 10,
            lease_duration: Duration::from_secs(30),
            holder: "test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim the old job");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.payload, json!({"old": true}));
    // Checkpoints arrived with version 2.
    s.checkpoint(
        &claimed[0].lease,
        durable_jobs::Checkpoint {
            key: "0".into(),
            name: "step".into(),
            outcome: durable_jobs::CheckpointOutcome::Ok(json!(1)),
            created_at: None,
            args_hash: None,
        },
    )
    .await
    .expect("checkpoint on the upgraded file");
    s.complete(&claimed[0].lease, json!("done"))
        .await
        .expect("complete");
    let job = s
        .get_job(claimed[0].job.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    s.close().await;
    assert_eq!(migration_rows(&db.path()).len() as i64, SCHEMA_VERSION);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    s.enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    s.close().await;
    {
        let conn = Connection::open(db.path()).expect("open raw");
        conn.execute(
            "INSERT INTO durable_jobs_migrations VALUES (?1, 'from the future', 0)",
            [SCHEMA_VERSION + 1],
        )
        .expect("pretend a newer library migrated");
    }
    match durable_jobs_sqlite::SqliteStorage::open(db.path()).await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // Refusing changed nothing: the newer version is still recorded.
    assert_eq!(
        migration_rows(&db.path()).last().map(|r| r.0),
        Some(SCHEMA_VERSION + 1)
    );
}

#[tokio::test]
async fn garbage_file_is_a_typed_error() {
    let db = TempDb::fresh();
    // Deterministic garbage, long enough to cover SQLite's 100-byte header.
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(db.path(), &garbage).expect("write garbage");
    match SqliteStorage::open(db.path()).await {
        Err(Error::Storage(e)) => {
            assert_eq!(e.kind(), StorageErrorKind::Corrupt, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("not a SQLite database"), "message: {msg}");
            assert!(msg.contains("jobs.db"), "message names the file: {msg}");
            let source = std::error::Error::source(&e).expect("the driver error is kept");
            assert!(
                source.downcast_ref::<rusqlite::Error>().is_some(),
                "{source:?}"
            );
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(db.path()).expect("read back"),
        garbage,
        "the file was not modified"
    );
}

#[tokio::test]
async fn missing_directory_is_a_typed_error() {
    let db = TempDb::fresh();
    let path = db.dir.path().join("no-such-dir").join("jobs.db");
    match SqliteStorage::open(&path).await {
        Err(Error::Storage(e)) => {
            assert_eq!(e.kind(), StorageErrorKind::Unavailable, "{e}");
            assert!(e.to_string().contains("no-such-dir"), "message: {e}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
}

/// Two storages opening one new file at the same time: both succeed and every migration
/// is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let db = TempDb::fresh();
    let (a, b, c) = tokio::join!(
        SqliteStorage::open(db.path()),
        SqliteStorage::open(db.path()),
        SqliteStorage::open(db.path()),
    );
    for s in [a, b, c] {
        s.expect("open").close().await;
    }
    assert_eq!(migration_rows(&db.path()).len() as i64, SCHEMA_VERSION);
}

/// A real database whose pages were overwritten (header intact) reports corruption as a
/// typed storage error wherever SQLite meets it, never a panic.
#[tokio::test]
async fn corrupted_pages_are_a_typed_error() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    s.enqueue_many(
        (0..2000)
            .map(|i| NewJob::new("t", json!({ "i": i, "pad": "x".repeat(100) })))
            .collect(),
    )
    .await
    .expect("enqueue");
    s.close().await;
    let mut bytes = std::fs::read(db.path()).expect("read file");
    assert!(bytes.len() > 16 * 4096, "file has many pages");
    // Keep the header page, scribble over everything after it.
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    }
    std::fs::write(db.path(), &bytes).expect("write corrupted file");

    let mut errors = Vec::new();
    match SqliteStorage::open(db.path()).await {
        Err(e) => errors.push(e),
        Ok(s) => {
            let filter = durable_jobs::JobFilter {
                limit: Some(10_000),
                ..Default::default()
            };
            if let Err(e) = s.list_jobs(filter).await {
                errors.push(e);
            }
            if let Err(e) = s.counts().await {
                errors.push(e);
            }
            s.close().await;
        }
    }
    assert!(
        !errors.is_empty(),
        "a corrupted file read back without error"
    );
    for e in errors {
        match e {
            Error::Storage(e) => {
                assert_eq!(e.kind(), StorageErrorKind::Corrupt, "{e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("is corrupt") && msg.contains("restore it from a backup"),
                    "message: {msg}"
                );
            }
            other => panic!("expected a storage error, got {other:?}"),
        }
    }
}

/// A file at version 3 (workflows, before operations) upgrades to version 4: its jobs
/// carry no serial key, flags or tags, are claimed past forbidden flags, and a job-key
/// replace updates an old pending holder in place; schedules and paused queues work.
#[tokio::test]
async fn version_three_file_gains_operations_on_upgrade() {
    let db = TempDb::fresh();
    {
        let conn = Connection::open(db.path()).expect("create the old file");
        for sql in [
            include_str!("../../migrations/0001_jobs.sql"),
            include_str!("../../migrations/0002_checkpoints.sql"),
            include_str!("../../migrations/0003_workflows.sql"),
        ] {
            conn.execute_batch(sql).expect("apply an old migration");
        }
        conn.execute_batch(
            "CREATE TABLE durable_jobs_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO durable_jobs_migrations VALUES (1, 'jobs', 0), (2, 'checkpoints', 0), (3, 'workflows', 0);
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, run_at, created_at, updated_at)
             VALUES ('t', '{\"old\":1}', 'default', 0, 'pending', 4, 0, 0, 0);
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, run_at, dedupe_key, created_at, updated_at)
             VALUES ('t', '{\"old\":2}', 'default', 0, 'pending', 4, 0, 'k', 0, 0);",
        )
        .expect("seed version 3 jobs");
    }
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);
    let mut replace = NewJob::new("t", json!({"new": 2}));
    replace.dedupe_key = Some("k".into());
    replace.key_mode = durable_jobs::KeyMode::Replace;
    replace.tags = vec!["upgraded".into()];
    let replaced = s.enqueue(replace).await.expect("replace the old holder");
    assert!(!replaced.created, "the old pending holder kept its id");
    let tagged = s
        .list_jobs(durable_jobs::JobFilter {
            tag: Some("upgraded".into()),
            ..Default::default()
        })
        .await
        .expect("list by tag");
    assert_eq!(tagged.len(), 1);
    assert_eq!(
        (tagged[0].id, &tagged[0].payload),
        (replaced.id, &json!({"new": 2}))
    );
    s.set_queue_paused("default", true).await.expect("pause");
    let params = DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit: 10,
        lease_duration: Duration::from_secs(30),
        holder: "test".into(),
        forbidden_flags: vec!["gpu".into()],
    };
    assert!(s.dequeue(params.clone()).await.expect("paused").is_empty());
    s.set_queue_paused("default", false).await.expect("resume");
    let claimed = s.dequeue(params).await.expect("claim the old jobs");
    assert_eq!(claimed.len(), 2, "old jobs have no flags and no serial key");
    let now = s.now().await.expect("now");
    s.upsert_schedule("nightly", json!({}), now)
        .await
        .expect("schedule on the upgraded file");
    assert_eq!(s.schedules().await.expect("schedules")[0].cursor, now);
    s.close().await;
    assert_eq!(migration_rows(&db.path()).len() as i64, SCHEMA_VERSION);
}

/// A file at version 4 (operations, before observability) upgrades to version 5: its
/// jobs carry no trace context and are claimed as before, new jobs store theirs, and the
/// worker registry works.
#[tokio::test]
async fn version_four_file_gains_observability_on_upgrade() {
    let db = TempDb::fresh();
    {
        let conn = Connection::open(db.path()).expect("create the old file");
        for sql in [
            include_str!("../../migrations/0001_jobs.sql"),
            include_str!("../../migrations/0002_checkpoints.sql"),
            include_str!("../../migrations/0003_workflows.sql"),
            include_str!("../../migrations/0004_operations.sql"),
        ] {
            conn.execute_batch(sql).expect("apply an old migration");
        }
        conn.execute_batch(
            "CREATE TABLE durable_jobs_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO durable_jobs_migrations VALUES (1, 'jobs', 0), (2, 'checkpoints', 0), (3, 'workflows', 0), (4, 'operations', 0);
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts, run_at, created_at, updated_at)
             VALUES ('t', '{\"old\":4}', 'default', 0, 'pending', 4, 0, 0, 0);",
        )
        .expect("seed a version 4 job");
    }
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);
    let mut new = NewJob::new("t", json!({"new": 5}));
    new.trace_context = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let new = s.enqueue(new).await.expect("enqueue").id;
    let claimed = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 10,
            lease_duration: Duration::from_secs(30),
            holder: "test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].job.payload, json!({"old": 4}));
    assert_eq!(claimed[0].job.trace_context, None, "old jobs have none");
    assert_eq!(claimed[1].job.id, new);
    assert!(claimed[1].job.trace_context.is_some());

    let now = s.now().await.expect("now");
    s.register_worker(WorkerRecord {
        name: "w".into(),
        host: "h".into(),
        pid: 1,
        queues: vec![WorkerQueue {
            name: "default".into(),
            concurrency: 1,
        }],
        version: "0.1.0".into(),
        started_at: now,
        last_seen: now,
        lease_ms: 30_000,
    })
    .await
    .expect("register on the upgraded file");
    assert_eq!(s.list_workers().await.expect("list").len(), 1);
    s.close().await;
    assert_eq!(migration_rows(&db.path()).len() as i64, SCHEMA_VERSION);
}

/// A file at version 5 (observability, before the timeline) upgrades to version 6: its
/// tags are carried onto the job row, its checkpoints have no write time, its finished
/// jobs are counted by finish time and have an empty history, and new attempts are
/// recorded.
#[tokio::test]
async fn version_five_file_gains_the_timeline_on_upgrade() {
    let db = TempDb::fresh();
    {
        let conn = Connection::open(db.path()).expect("create the old file");
        for sql in [
            include_str!("../../migrations/0001_jobs.sql"),
            include_str!("../../migrations/0002_checkpoints.sql"),
            include_str!("../../migrations/0003_workflows.sql"),
            include_str!("../../migrations/0004_operations.sql"),
            include_str!("../../migrations/0005_observability.sql"),
        ] {
            conn.execute_batch(sql).expect("apply an old migration");
        }
        conn.execute_batch(
            "CREATE TABLE durable_jobs_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO durable_jobs_migrations VALUES (1, 'jobs', 0), (2, 'checkpoints', 0), (3, 'workflows', 0), (4, 'operations', 0), (5, 'observability', 0);
             INSERT INTO durable_jobs (id, task, payload, queue, priority, status, max_attempts, run_at, flags, serial_key, created_at, updated_at)
             VALUES (1, 't', '{\"old\":5}', 'default', 0, 'pending', 4, 0, '[\"slow\"]', 'acct', 0, 0);
             INSERT INTO durable_jobs_tags VALUES (1, 'eu'), (1, 'billing');
             INSERT INTO durable_jobs_checkpoints VALUES (1, '0', 'step', 1, '7');
             INSERT INTO durable_jobs (id, task, payload, queue, priority, status, attempt, max_attempts, run_at, created_at, started_at, completed_at, updated_at)
             VALUES (2, 't', '{}', 'mail', 0, 'completed', 1, 4, 0, 0, 0, 5, 5);",
        )
        .expect("seed version 5 jobs");
    }
    let clock = ManualClock::new();
    let s = db.open(&clock).await;
    assert_eq!(s.schema_version().await.expect("version"), SCHEMA_VERSION);

    let old = s.get_job(1).await.expect("get").expect("exists");
    assert_eq!(old.tags, ["billing", "eu"], "tags moved onto the job row");
    assert_eq!(old.flags, ["slow"]);
    assert_eq!(old.serial_key.as_deref(), Some("acct"));
    let cps = s.list_checkpoints(1).await.expect("checkpoints");
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].created_at, None, "written before the column existed");
    assert!(s.list_attempts(2).await.expect("attempts").is_empty());
    let epoch = chrono::DateTime::from_timestamp(0, 0).expect("epoch");
    let finished = s.finished_counts(epoch).await.expect("finished counts");
    assert_eq!(finished.len(), 1);
    assert_eq!(
        (
            finished[0].queue.as_str(),
            finished[0].status,
            finished[0].count
        ),
        ("mail", JobStatus::Completed, 1)
    );

    let claimed = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 10,
            lease_duration: Duration::from_secs(30),
            holder: "test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.tags, ["billing", "eu"]);
    s.checkpoint(
        &claimed[0].lease,
        durable_jobs::Checkpoint {
            key: "1".into(),
            name: "next".into(),
            outcome: durable_jobs::CheckpointOutcome::Ok(json!(8)),
            created_at: None,
            args_hash: None,
        },
    )
    .await
    .expect("checkpoint");
    s.complete(&claimed[0].lease, json!("done"))
        .await
        .expect("complete");
    let cps = s.list_checkpoints(1).await.expect("checkpoints");
    assert_eq!(cps[1].created_at, Some(s.now().await.expect("now")));
    let history = s.list_attempts(1).await.expect("attempts");
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].attempt,
            history[0].worker.as_deref(),
            history[0].outcome
        ),
        (1, Some("test"), durable_jobs::AttemptOutcome::Completed)
    );
    s.close().await;
    assert_eq!(migration_rows(&db.path()).len() as i64, SCHEMA_VERSION);
}
