//! The timeline on PostgreSQL beyond the shared suite: the attempt history written by the
//! batch completion and the cancel cascade, how it is stored, checkpoint write times and
//! a schema upgraded from version 5.

use crate::schema;
use durable_jobs::{
    AttemptOutcome, Checkpoint, CheckpointOutcome, Completion, DequeueParams, NewJob,
    SpawnChildrenParams, Storage,
};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage, LATEST_VERSION};
use serde_json::{json, Value};
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
/// history is stored on the row as a JSON array an operator can read with SQL.
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
    let stored: Value = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT attempts FROM \"{}\".jobs WHERE id = $1",
        t.schema()
    )))
    .bind(claimed[0].job.id)
    .fetch_one(s.pool())
    .await
    .expect("attempts column");
    let record = &stored[0];
    assert_eq!(record["attempt"], json!(1));
    assert_eq!(record["worker"], json!("batch"));
    assert_eq!(record["outcome"], json!("completed"));
    assert_eq!(record["error"], Value::Null);
    assert!(record["started_at"].is_string() && record["finished_at"].is_string());
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
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{name}\" CASCADE")))
        .execute(s.pool())
        .await
        .expect("drop");
}
