//! The timeline on PostgreSQL beyond the shared suite: the attempt history written by the
//! batch completion and the cancel cascade, how it is stored, checkpoint write times and
//! a schema upgraded from version 5.

use crate::schema;
use chrono::{DateTime, Utc};
use durable_jobs::{
    AttemptOutcome, Checkpoint, CheckpointOutcome, Completion, DequeueParams, JobStatus, NewJob,
    SpawnChildrenParams, Storage,
};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage, LATEST_VERSION};
use serde_json::json;
use std::time::Duration;

fn params(holder: &str, limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: Vec::new(),
        limit,
        lease_duration: Duration::from_secs(60),
        holder: holder.into(),
        forbidden_flags: Vec::new(),
    }
}

/// The batch completion appends each job's attempt in the same statement, and the
/// history is stored on the row as an array of the schema's `attempt` composite type,
/// which an operator can read with SQL.
#[tokio::test]
async fn complete_many_records_each_attempt_on_the_row() {
    let t = schema().await;
    let s = t.storage();
    s.enqueue_many((0..50).map(|i| NewJob::new("t", json!(i))).collect())
        .await
        .expect("enqueue");
    let claimed = s.dequeue(params("batch", 50)).await.expect("dequeue");
    assert_eq!(claimed.len(), 50);
    let out = s
        .complete_many(
            claimed
                .iter()
                .map(|c| Completion {
                    lease: c.lease.clone(),
                    result: json!(c.job.id),
                })
                .collect(),
        )
        .await
        .expect("complete_many");
    assert!(out.iter().all(|r| r.is_ok()));
    for c in &claimed {
        let history = s.list_attempts(c.job.id).await.expect("attempts");
        assert_eq!(history.len(), 1, "job {}", c.job.id);
        let a = &history[0];
        assert_eq!(
            (
                a.attempt,
                a.worker.as_deref(),
                a.outcome,
                a.error.as_deref()
            ),
            (1, Some("batch"), AttemptOutcome::Completed, None)
        );
        assert_eq!(Some(a.started_at), c.job.started_at);
        assert!(a.finished_at.is_some_and(|f| f >= a.started_at));
    }
    // Stored as an array of the schema's own composite type, readable with plain SQL.
    let (udt_schema, udt_name): (String, String) = sqlx::query_as(
        "SELECT udt_schema::text, udt_name::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'jobs' AND column_name = 'attempts'",
    )
    .bind(t.schema())
    .fetch_one(s.pool())
    .await
    .expect("attempts column");
    assert_eq!(
        (udt_schema.as_str(), udt_name.as_str()),
        (t.schema(), "_attempt")
    );
    type Stored = (
        Option<i32>,
        Option<i32>,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
    );
    let stored: Stored = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT cardinality(attempts), (attempts[1]).attempt, (attempts[1]).worker,
                (attempts[1]).started_at, (attempts[1]).finished_at, (attempts[1]).outcome,
                (attempts[1]).error
         FROM \"{}\".jobs WHERE id = $1",
        t.schema()
    )))
    .bind(claimed[0].job.id)
    .fetch_one(s.pool())
    .await
    .expect("stored attempt");
    let (len, attempt, worker, started_at, finished_at, outcome, error) = stored;
    assert_eq!(
        (len, attempt, worker.as_deref(), outcome.as_deref(), error),
        (Some(1), Some(1), Some("batch"), Some("completed"), None)
    );
    assert_eq!(started_at, claimed[0].job.started_at);
    assert!(finished_at.is_some_and(|f| started_at.is_some_and(|s| f >= s)));
    t.drop_schema().await.expect("drop");
}

/// The history's type is qualified by the configured schema wherever it is named: in a
/// schema whose name needs quoting, next to another schema with its own type, attempts
/// are recorded and listed in order, and each schema drops (with its type) by
/// `DROP SCHEMA ... CASCADE`.
#[tokio::test]
async fn history_type_is_per_schema_and_quoted() {
    let url = server_url().expect("server");
    let mut storages = Vec::new();
    for prefix in ["DJ_Mixed_Case", "dj_other"] {
        let s = PostgresStorage::connect_with(
            &url,
            PostgresOptions::new()
                .schema(unique_schema(prefix))
                .max_connections(2),
        )
        .await
        .expect("connect");
        s.migrate().await.expect("migrate");
        storages.push(s);
    }
    for s in &storages {
        let mut job = NewJob::new("t", json!(0));
        job.max_attempts = 3;
        let id = s.enqueue(job).await.expect("enqueue").id;
        let c = s.dequeue(params("w1", 1)).await.expect("claim").remove(0);
        s.fail(
            &c.lease,
            durable_jobs::Failure {
                error: "it's \"quoted\"".into(),
                retry_in: Some(Duration::ZERO),
            },
        )
        .await
        .expect("fail");
        let c = s.dequeue(params("w2", 1)).await.expect("claim").remove(0);
        s.release(&c.lease).await.expect("release");
        let c = s.dequeue(params("w3", 1)).await.expect("claim").remove(0);
        let history = s.list_attempts(id).await.expect("attempts");
        let got: Vec<_> = history
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
            got,
            [
                (
                    1,
                    Some("w1"),
                    AttemptOutcome::Retrying,
                    Some("it's \"quoted\"")
                ),
                (2, Some("w2"), AttemptOutcome::Released, None),
                (2, Some("w3"), AttemptOutcome::Running, None),
            ],
            "{}",
            s.schema()
        );
        assert!(history[2].finished_at.is_none());
        s.complete(&c.lease, json!(1)).await.expect("complete");
        assert_eq!(
            s.list_attempts(id)
                .await
                .expect("attempts")
                .iter()
                .map(|a| a.outcome)
                .collect::<Vec<_>>(),
            [
                AttemptOutcome::Retrying,
                AttemptOutcome::Released,
                AttemptOutcome::Completed
            ]
        );
    }
    for s in &storages {
        durable_jobs_postgres::testing::drop_schemas(s.pool(), s.schema())
            .await
            .expect("drop");
    }
}

/// Finished counts come by queue (byte order), then status in lifecycle order
/// (completed, failed, cancelled), not by the status's text.
#[tokio::test]
async fn finished_counts_are_ordered_by_queue_then_lifecycle() {
    let t = schema().await;
    let s = t.storage();
    let since = s.now().await.expect("now");
    for queue in ["b", "B", "a"] {
        let on = |payload: i32| {
            let mut job = NewJob::new("t", json!(payload));
            job.queue = queue.into();
            job.max_attempts = 1;
            job
        };
        let cancelled = s.enqueue(on(0)).await.expect("enqueue").id;
        assert!(s.cancel(cancelled).await.expect("cancel"));
        for outcome in ["fail", "complete"] {
            s.enqueue(on(1)).await.expect("enqueue");
            let c = s
                .dequeue(DequeueParams {
                    queues: vec![queue.into()],
                    ..params("w", 1)
                })
                .await
                .expect("claim")
                .remove(0);
            if outcome == "fail" {
                s.fail(
                    &c.lease,
                    durable_jobs::Failure {
                        error: "x".into(),
                        retry_in: None,
                    },
                )
                .await
                .expect("fail");
            } else {
                s.complete(&c.lease, json!(1)).await.expect("complete");
            }
        }
    }
    let got: Vec<_> = s
        .finished_counts(since)
        .await
        .expect("finished_counts")
        .into_iter()
        .map(|c| (c.queue, c.status, c.count))
        .collect();
    let mut want = Vec::new();
    for queue in ["B", "a", "b"] {
        for status in [
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            want.push((queue.to_string(), status, 1));
        }
    }
    assert_eq!(got, want);
    t.drop_schema().await.expect("drop");
}

/// Cancelling a workflow records the ended attempt of every running member of the
/// cascade, and nothing for members that were not running.
#[tokio::test]
async fn cancel_cascade_records_running_members_only() {
    let t = schema().await;
    let s = t.storage();
    let parent = s.enqueue(NewJob::new("t", json!("p"))).await.expect("p").id;
    let p = s
        .dequeue(params("w-parent", 1))
        .await
        .expect("claim")
        .remove(0);
    let kids = s
        .spawn_children(SpawnChildrenParams {
            lease: &p.lease,
            key: "0",
            name: "kids",
            jobs: vec![NewJob::new("t", json!("a")), NewJob::new("t", json!("b"))],
        })
        .await
        .expect("spawn");
    let running_kid = s
        .dequeue(params("w-kid", 1))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(running_kid.job.id, kids[0]);
    assert_eq!(running_kid.job.parent_id, Some(parent));
    assert!(s.cancel(parent).await.expect("cancel"));
    let summary = |h: Vec<durable_jobs::AttemptRecord>| {
        h.into_iter()
            .map(|a| (a.attempt, a.worker, a.outcome))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(s.list_attempts(parent).await.expect("attempts")),
        [(1, Some("w-parent".into()), AttemptOutcome::Cancelled)]
    );
    assert_eq!(
        summary(s.list_attempts(kids[0]).await.expect("attempts")),
        [(1, Some("w-kid".into()), AttemptOutcome::Cancelled)]
    );
    assert!(s.list_attempts(kids[1]).await.expect("attempts").is_empty());
    // A job that does not exist has no history.
    assert!(s
        .list_attempts(i64::MAX)
        .await
        .expect("attempts")
        .is_empty());
    t.drop_schema().await.expect("drop");
}

/// Every checkpoint write records its time from the storage clock, replaced on rewrite:
/// a plain checkpoint, a spawn's and a signal take's.
#[tokio::test]
async fn every_checkpoint_write_records_its_time() {
    let t = schema().await;
    let s = t.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(0)))
        .await
        .expect("enqueue")
        .id;
    let c = s.dequeue(params("w", 1)).await.expect("claim").remove(0);
    let before = s.now().await.expect("now");
    s.checkpoint(
        &c.lease,
        Checkpoint {
            key: "0".into(),
            name: "step".into(),
            outcome: CheckpointOutcome::Ok(json!(1)),
            // Ignored on a write.
            created_at: Some(chrono::DateTime::UNIX_EPOCH),
            args_hash: None,
        },
    )
    .await
    .expect("checkpoint");
    s.spawn_children(SpawnChildrenParams {
        lease: &c.lease,
        key: "1",
        name: "kids",
        jobs: vec![NewJob::new("other", json!("kid"))],
    })
    .await
    .expect("spawn");
    s.send_signal(id, "go", json!("x")).await.expect("signal");
    let taken = s
        .take_signals(durable_jobs::TakeSignalsParams {
            lease: &c.lease,
            name: "go",
            limit: 10,
            key: "2",
        })
        .await
        .expect("take");
    assert_eq!(taken, [json!("x")]);
    let after = s.now().await.expect("now");
    let got = s.list_checkpoints(id).await.expect("checkpoints");
    assert_eq!(
        got.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    for cp in &got {
        let at = cp.created_at.expect("written at");
        assert!(
            before <= at && at <= after,
            "{cp:?} not in [{before}, {after}]"
        );
    }
    t.drop_schema().await.expect("drop");
}

/// A schema at version 5 upgrades in place: checkpoints written before keep no write
/// time, jobs that ran before have no history but record their next attempts, and the
/// running attempt of a job claimed before the upgrade shows as running.
#[tokio::test]
async fn upgrading_a_version_5_schema_keeps_checkpoints_and_jobs() {
    use durable_jobs_postgres::migrate::{render, MIGRATIONS};
    let url = server_url().expect("server");
    let name = unique_schema("dj_upgrade5");
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().schema(&name).max_connections(2),
    )
    .await
    .expect("connect");
    let mut sql = format!(
        "CREATE SCHEMA \"{name}\";
         CREATE TABLE \"{name}\".migrations (version bigint PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for m in &MIGRATIONS[..5] {
        sql.push_str(&render(m.sql, &name));
        sql.push_str(&format!(
            "\nINSERT INTO \"{name}\".migrations (version, name) VALUES ({}, '{}');\n",
            m.version, m.name
        ));
    }
    // A job mid-run with a checkpoint, and a finished job, as version 5 wrote them.
    sql.push_str(&format!(
        "INSERT INTO \"{name}\".jobs (id, task, payload, status, attempt, lease_holder,
             lease_token, lease_expires_at, started_at)
         VALUES (1, 't', '1', 'running', 1, 'old-worker', 7, now() + interval '1 hour', now());
         INSERT INTO \"{name}\".checkpoints (job_id, key, name, ok) VALUES (1, '0', 'a', '1');
         INSERT INTO \"{name}\".jobs (id, task, payload, status, attempt, completed_at)
         VALUES (2, 't', '2', 'completed', 1, now());
         SELECT setval(pg_get_serial_sequence('\"{name}\".jobs', 'id'), 2);"
    ));
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(s.pool())
        .await
        .expect("version 5 schema");
    s.migrate().await.expect("upgrade");
    assert_eq!(s.schema_version().await.expect("version"), LATEST_VERSION);

    let cps = s.list_checkpoints(1).await.expect("checkpoints");
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].created_at, None, "written before the column existed");
    assert!(s.list_attempts(2).await.expect("attempts").is_empty());
    let running = s.list_attempts(1).await.expect("attempts");
    assert_eq!(
        running
            .iter()
            .map(|a| (a.attempt, a.worker.as_deref(), a.outcome))
            .collect::<Vec<_>>(),
        [(1, Some("old-worker"), AttemptOutcome::Running)]
    );
    let lease = durable_jobs::Lease {
        job_id: 1,
        attempt: 1,
        token: 7,
        expires_at: chrono::Utc::now(),
    };
    s.complete(&lease, json!("done")).await.expect("complete");
    let history = s.list_attempts(1).await.expect("attempts");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, AttemptOutcome::Completed);
    assert_eq!(history[0].worker.as_deref(), Some("old-worker"));
    durable_jobs_postgres::testing::drop_schemas(s.pool(), &name)
        .await
        .expect("drop");
}
