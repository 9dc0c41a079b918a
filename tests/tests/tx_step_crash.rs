//! Transactional steps survive a worker SIGKILLed between its business write and the
//! step's commit, on SQLite and PostgreSQL: the write rolls back with the transaction,
//! a new worker charges once more, and the order is charged exactly once.
//!
//! The worker (`tx_step_worker`) prints `charged <attempt>` from inside the step after
//! its insert and blocks there, so the kill lands between the write and the commit.

use durable_jobs::{CheckpointOutcome, JobId, JobStatus, NewJob, Storage};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::crash::{assert_success, kill, wait_with_deadline};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the worker runs: its backend flags.
fn spawn(backend: &[&str], mode: &str, job: JobId) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tx_step_worker"))
        .args(backend)
        .args(["--mode", mode, "--job", &job.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tx_step_worker")
}

/// Starts a worker in `hang` mode and waits for the line it prints from inside the
/// step, after its insert and before its commit; returns it still blocked there.
async fn hung_in_the_step(backend: &[&str], job: JobId) -> Child {
    let mut child = spawn(backend, "hang", job);
    let stdout = child.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join the reader")
    .expect("read the worker's stdout");
    if line.trim() != "charged 1" {
        let out = wait_with_deadline(child, Duration::from_secs(5));
        panic!(
            "expected `charged 1` from inside the step, got {line:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// Runs a worker in `finish` mode to the job's end and checks it reports completion.
async fn finish(backend: &[&str], job: JobId) {
    let child = spawn(backend, "finish", job);
    let out =
        tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(120)))
            .await
            .expect("wait for the finishing worker");
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("status completed"), "worker said: {stdout}");
}

/// The job completed with the one payment's id, whose step checkpoint holds the same.
async fn assert_charged_once(storage: &dyn Storage, job: JobId, payments: &[(i64, i64, i32)]) {
    assert_eq!(payments.len(), 1, "exactly one payment: {payments:?}");
    let (id, order, attempt) = payments[0];
    assert_eq!(order, 42);
    assert!(
        attempt >= 2,
        "written by an attempt after the killed one: {payments:?}"
    );
    let j = storage.get_job(job).await.expect("get").expect("job");
    assert_eq!(j.status, JobStatus::Completed, "{j:?}");
    assert_eq!(j.result, Some(json!(id)));
    let cps = storage.list_checkpoints(job).await.expect("checkpoints");
    assert!(
        matches!(&cps[..], [c] if c.name == "charge" && c.outcome == CheckpointOutcome::Ok(json!(id))),
        "{cps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_step_killed_between_write_and_commit_charges_once() {
    let dir = tempfile::Builder::new()
        .prefix("durable-jobs-txstep-")
        .tempdir()
        .expect("temporary directory");
    let db = dir.path().join("jobs.db");
    let storage = SqliteStorage::open(&db).await.expect("open");
    let conn = rusqlite::Connection::open(&db).expect("open the business side");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch(
        "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, \
         attempt INTEGER NOT NULL)",
    )
    .expect("create payments");
    let payments = || -> Vec<(i64, i64, i32)> {
        let mut st = conn
            .prepare("SELECT id, order_id, attempt FROM payments")
            .expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    };
    let mut job = NewJob::new("order", json!(42));
    job.max_attempts = 5;
    let id = storage.enqueue(job).await.expect("enqueue").id;
    let path = db.to_str().expect("utf-8 path");
    let backend = ["--sqlite", path];

    let child = hung_in_the_step(&backend, id).await;
    assert!(payments().is_empty(), "the write is not committed yet");
    kill(child);
    assert!(payments().is_empty(), "the killed write rolled back");
    assert!(storage
        .list_checkpoints(id)
        .await
        .expect("checkpoints")
        .is_empty());

    finish(&backend, id).await;
    assert_charged_once(&storage, id, &payments()).await;
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_step_killed_between_write_and_commit_charges_once() {
    let t = TestSchema::new().await.expect("test schema");
    let table = format!("\"{}\".payments", t.schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, order_id bigint NOT NULL, \
         attempt integer NOT NULL)"
    )))
    .execute(t.storage().pool())
    .await
    .expect("create payments");
    let payments = || async {
        sqlx::query_as::<_, (i64, i64, i32)>(AssertSqlSafe(format!(
            "SELECT id, order_id, attempt FROM {table}"
        )))
        .fetch_all(t.storage().pool())
        .await
        .expect("read payments")
    };
    let mut job = NewJob::new("order", json!(42));
    job.max_attempts = 5;
    let id = t.storage().enqueue(job).await.expect("enqueue").id;
    let backend = ["--postgres", t.url(), "--schema", t.schema()];

    let child = hung_in_the_step(&backend, id).await;
    assert!(
        payments().await.is_empty(),
        "the write is not committed yet"
    );
    kill(child);
    assert!(
        payments().await.is_empty(),
        "the killed write never commits"
    );

    finish(&backend, id).await;
    assert_charged_once(t.storage(), id, &payments().await).await;
    t.drop_schema().await.expect("drop the test schema");
}
