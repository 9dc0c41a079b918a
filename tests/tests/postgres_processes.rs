//! Several OS processes on one PostgreSQL schema: every job runs exactly once, and a
//! worker SIGKILLed mid-job loses its lease, whose job is reclaimed and finished; a
//! waiter hears of a job another process finished.

use durable_jobs::{
    Error, Failure, JobFilter, JobStatus, NewJob, Queue, Storage, StorageCall, StorageLayer,
};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_tests::{capped, pg};
use serde_json::json;
use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spawn_worker(t: &TestSchema, mode: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pg_worker"))
        .args(["--url", t.url(), "--schema", t.schema(), "--mode", mode])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pg_worker")
}

/// Waits for a child to exit, killing it if it outlives the deadline.
async fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll child") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "pg_worker still running after {limit:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "pg_worker failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `completed=N` from a worker's report line.
fn reported_completed(out: &Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("completed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no report in {:?}", String::from_utf8_lossy(&out.stdout)))
}

async fn setup() -> TestSchema {
    let t = TestSchema::new().await.expect("test schema");
    pg::create_tables(t.storage()).await.expect("tables");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_drain_ten_thousand_jobs_exactly_once() {
    let t = setup().await;
    let n = 10_000;
    let ids: Vec<i64> = t
        .storage()
        .enqueue_many(
            (0..n)
                .map(|i| NewJob::new(pg::TASK, json!({ "i": i })))
                .collect(),
        )
        .await
        .expect("enqueue")
        .iter()
        .map(|e| e.id)
        .collect();
    let workers: Vec<Child> = (0..3).map(|_| spawn_worker(&t, "drain", &[])).collect();
    let mut completed = 0;
    for w in workers {
        let out = wait_with_deadline(w, Duration::from_secs(120)).await;
        assert_success(&out);
        completed += reported_completed(&out);
    }
    let runs = pg::executions(t.storage()).await.expect("executions");
    let mut per_job: HashMap<i64, usize> = HashMap::new();
    let mut per_pid: HashMap<i32, usize> = HashMap::new();
    for (job, _, pid) in &runs {
        *per_job.entry(*job).or_default() += 1;
        *per_pid.entry(*pid).or_default() += 1;
    }
    assert_eq!(runs.len(), n, "executions recorded");
    assert_eq!(per_job.len(), n, "distinct jobs executed");
    assert!(per_job.values().all(|&c| c == 1), "a job ran twice");
    assert!(
        ids.iter().all(|id| per_job.contains_key(id)),
        "a job never ran"
    );
    assert_eq!(completed, n as u64, "completions reported by the workers");
    let counts = t.storage().counts().await.expect("counts");
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.status, c.count))
            .collect::<Vec<_>>(),
        vec![(JobStatus::Completed, n as u64)]
    );
    eprintln!("executions per worker process: {per_pid:?}");
    t.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_its_lease_and_the_job_completes_elsewhere() {
    let t = setup().await;
    let s = t.storage();
    let id = s
        .enqueue(NewJob::new(pg::TASK, json!("crash me")))
        .await
        .expect("enqueue")
        .id;
    let mut blocked = spawn_worker(&t, "block", &["--lease-ms", "1500"]);
    // Wait until the worker holds the job (it records its lease, then blocks).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stale, pid) = loop {
        if let Some(found) = pg::blocked_lease(s).await.expect("blocked lease") {
            break found;
        }
        if let Some(status) = blocked.try_wait().expect("poll child") {
            panic!("blocking worker exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the worker never claimed the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stale.job_id, id);
    assert_eq!(pid, i32::try_from(blocked.id()).expect("pid fits"));
    // SIGKILL: no graceful release, no last heartbeat.
    blocked.kill().expect("SIGKILL");
    blocked.wait().expect("reap");
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(
        job.status,
        JobStatus::Running,
        "still held by the dead worker"
    );

    let out = wait_with_deadline(spawn_worker(&t, "finish", &[]), Duration::from_secs(60)).await;
    assert_success(&out);
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.attempt, 2,
        "the killed attempt counted, the second one ran"
    );
    let runs = pg::executions(s).await.expect("executions");
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].0, runs[0].1), (id, 2));
    assert_ne!(runs[0].2, pid, "finished by another process");

    // The dead holder's lease can no longer write anything.
    for r in [
        s.complete(&stale, json!("stale")).await,
        s.fail(
            &stale,
            Failure {
                error: "stale".into(),
                retry_in: None,
            },
        )
        .await,
        s.release(&stale).await,
        s.heartbeat(&stale, Duration::from_secs(30))
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(Error::LeaseLost { job_id }) if job_id == id),
            "expected LeaseLost, got {r:?}"
        );
    }
    let after = s.list_jobs(JobFilter::default()).await.expect("list");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].status, JobStatus::Completed);
    assert_ne!(after[0].result, Some(json!("stale")));
    t.drop_schema().await.expect("drop");
}

/// Tells the test when the waiting queue's storage answered `watch_job`: the waiter has
/// read its job as unfinished and marked it awaited.
struct Watched(Arc<tokio::sync::Notify>);

impl StorageLayer for Watched {
    fn on_call(&self, call: &StorageCall<'_>) {
        if call.operation == "watch_job" && call.error.is_none() {
            self.0.notify_one();
        }
    }
}

/// A waiter in this process is woken by the NOTIFY of a job finished in another OS
/// process (a pg_worker), and of a job cancelled through another pool. It polls once an
/// hour, so only the notification can wake it within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_another_process_finishes_the_job() {
    let t = setup().await;
    let seen = Arc::new(tokio::sync::Notify::new());
    let waiting = Queue::with_layers(
        Arc::new(t.storage().clone()),
        vec![Arc::new(Watched(seen.clone()))],
    );
    waiting.set_wait_poll_interval(Duration::from_secs(3600));
    let bound = Duration::from_secs(120);

    let id = t
        .storage()
        .enqueue(NewJob::new(pg::TASK, json!("await me")))
        .await
        .expect("enqueue")
        .id;
    let waiter = {
        let q = waiting.clone();
        tokio::spawn(async move { q.wait_for::<()>(id, bound).await })
    };
    seen.notified().await;
    let out = wait_with_deadline(spawn_worker(&t, "drain", &[]), bound).await;
    assert_success(&out);
    waiter.await.expect("waiter").expect("completed elsewhere");
    let runs = pg::executions(t.storage()).await.expect("executions");
    assert_eq!(runs.len(), 1);
    assert_ne!(
        runs[0].2,
        i32::try_from(std::process::id()).expect("pid fits"),
        "run by the other process"
    );

    let other = PostgresStorage::connect_with(
        t.url(),
        PostgresOptions::new()
            .schema(t.schema())
            .max_connections(1)
            .listen(false),
    )
    .await
    .expect("second pool");
    let id = other
        .enqueue(NewJob::new(pg::TASK, json!("cancel me")))
        .await
        .expect("enqueue")
        .id;
    let waiter = {
        let q = waiting.clone();
        tokio::spawn(async move { q.wait_for::<()>(id, bound).await })
    };
    seen.notified().await;
    assert!(other.cancel(id).await.expect("cancel"));
    match waiter.await.expect("waiter") {
        Err(Error::JobCancelled { job_id, .. }) => assert_eq!(job_id, id),
        r => panic!("expected JobCancelled, got {r:?}"),
    }
    other.pool().close().await;
    t.drop_schema().await.expect("drop");
}

/// A key's running limit holds across processes: three worker processes with eight
/// slots each run 24 jobs of one key limited to 3, each job holding its slot until three
/// run; the recorded starts and ends never have more than three open at once, and
/// reach three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limit_caps_running_jobs_across_processes() {
    let t = setup().await;
    let queue = durable_jobs::Queue::new(std::sync::Arc::new(t.storage().clone()));
    queue.set_key_limit(capped::KEY, 3).await.expect("limit");
    let n = 24;
    t.storage()
        .enqueue_many(capped::jobs(n))
        .await
        .expect("enqueue");
    let workers: Vec<Child> = (0..3)
        .map(|_| spawn_worker(&t, "capped", &["--concurrency", "8", "--limit", "3"]))
        .collect();
    let mut completed = 0;
    for w in workers {
        let out = wait_with_deadline(w, Duration::from_secs(120)).await;
        assert_success(&out);
        completed += reported_completed(&out);
    }
    assert_eq!(completed, n as u64);
    let events = pg::capped_events(t.storage()).await.expect("events");
    assert_eq!(events.len(), 2 * n, "a start and an end per job");
    let started: Vec<bool> = events.iter().map(|e| e.0).collect();
    assert_eq!(capped::max_overlap(&started), 3, "{events:?}");
    t.drop_schema().await.expect("drop");
}

/// A queue's rate limit holds across processes: three draining worker processes start
/// exactly 5 of 40 jobs of a queue limited to 5 starts per hour, then find nothing more
/// to claim; the other 35 wait for the next window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_limit_caps_starts_across_processes() {
    let t = setup().await;
    let queue = durable_jobs::Queue::new(std::sync::Arc::new(t.storage().clone()));
    queue
        .set_queue_rate_limit("default", 5, Duration::from_secs(3600))
        .await
        .expect("limit");
    let n = 40;
    t.storage()
        .enqueue_many(
            (0..n)
                .map(|i| NewJob::new(pg::TASK, json!({ "i": i })))
                .collect(),
        )
        .await
        .expect("enqueue");
    let workers: Vec<Child> = (0..3).map(|_| spawn_worker(&t, "drain", &[])).collect();
    let mut completed = 0;
    for w in workers {
        let out = wait_with_deadline(w, Duration::from_secs(120)).await;
        assert_success(&out);
        completed += reported_completed(&out);
    }
    assert_eq!(completed, 5, "five starts in the window");
    assert_eq!(pg::executions(t.storage()).await.expect("runs").len(), 5);
    let mut counts: Vec<(JobStatus, u64)> = t
        .storage()
        .counts()
        .await
        .expect("counts")
        .iter()
        .map(|c| (c.status, c.count))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![(JobStatus::Pending, 35), (JobStatus::Completed, 5)]
    );
    t.drop_schema().await.expect("drop");
}
