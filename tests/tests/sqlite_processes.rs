//! Several OS processes on one SQLite file: no job runs twice, none is lost, and a
//! worker SIGKILLed mid-job leaves an intact file whose job is reclaimed and finished; a
//! waiter hears of a job another process finished.

use durable_jobs::{JobStatus, NewJob, Queue, Storage, StorageCall, StorageLayer};
use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::capped;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::Builder::new()
                .prefix("durable-jobs-sqlite-procs-")
                .tempdir()
                .expect("temporary directory"),
        }
    }
    fn db(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("executions.log")
    }
    fn marker(&self) -> PathBuf {
        self.dir.path().join("started.marker")
    }
}

fn spawn_worker(files: &Files, mode: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sqlite_worker"))
        .arg("--db")
        .arg(files.db())
        .arg("--log")
        .arg(files.log())
        .args(["--mode", mode])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sqlite_worker")
}

/// Waits for a child to exit, killing it if it outlives the deadline.
fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll child") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "worker still running after {limit:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "worker failed ({}):\nstdout:\n{}\nstderr:\n{}",
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
        .expect("report line with completed=")
}

/// Every execution logged: (job id, attempt, pid).
fn executions(log: &Path) -> Vec<(i64, i32, u32)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.split(' ');
            let mut next = || {
                f.next()
                    .unwrap_or_else(|| panic!("malformed log line `{l}`"))
            };
            (
                next().parse().expect("job id"),
                next().parse().expect("attempt"),
                next().parse().expect("pid"),
            )
        })
        .collect()
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("open for the integrity check");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_drain_5000_jobs_each_exactly_once() {
    let files = Files::new();
    let n = 5000;
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let ids = storage
        .enqueue_many((0..n).map(|i| NewJob::new("record", json!(i))).collect())
        .await
        .expect("enqueue");
    assert_eq!(ids.len(), n);

    let a = spawn_worker(&files, "drain", &["--concurrency", "16"]);
    let b = spawn_worker(&files, "drain", &["--concurrency", "16"]);
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            wait_with_deadline(a, Duration::from_secs(180)),
            wait_with_deadline(b, Duration::from_secs(180)),
        )
    })
    .await
    .expect("wait for workers");
    assert_success(&a);
    assert_success(&b);

    let runs = executions(&files.log());
    let mut per_job: HashMap<i64, usize> = HashMap::new();
    for (id, attempt, _) in &runs {
        assert_eq!(*attempt, 1, "job {id} needed a second attempt");
        *per_job.entry(*id).or_default() += 1;
    }
    let twice: Vec<_> = per_job.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "jobs executed more than once: {twice:?}");
    for e in &ids {
        assert!(per_job.contains_key(&e.id), "job {} never executed", e.id);
    }
    assert_eq!(runs.len(), n);
    assert_eq!(reported_completed(&a) + reported_completed(&b), n as u64);

    let counts = storage.counts().await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].status, JobStatus::Completed);
    assert_eq!(counts[0].count, n as u64);
    let pids: std::collections::HashSet<u32> = runs.iter().map(|r| r.2).collect();
    println!(
        "jobs per process: {:?}",
        pids.iter()
            .map(|p| runs.iter().filter(|r| r.2 == *p).count())
            .collect::<Vec<_>>()
    );
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_leaves_an_intact_file_and_its_job_is_reclaimed() {
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let id = storage
        .enqueue(NewJob::new("record", json!("crash me")))
        .await
        .expect("enqueue")
        .id;

    let mut crashing = spawn_worker(
        &files,
        "block",
        &[
            "--concurrency",
            "1",
            "--lease-ms",
            "1500",
            "--marker",
            files.marker().to_str().expect("utf-8 path"),
        ],
    );
    // Wait until the handler is running (it writes the marker, then blocks).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files.marker().exists() {
        if let Some(status) = crashing.try_wait().expect("poll child") {
            panic!("blocking worker exited early: {status}");
        }
        assert!(Instant::now() < deadline, "the handler never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crashing.kill().expect("SIGKILL the worker");
    crashing.wait().expect("reap the worker");
    let crashed_pid = crashing.id();

    assert_eq!(integrity(&files.db()), "ok");
    let job = storage.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Running, "killed mid-job");
    assert_eq!(job.attempt, 1);

    let recovering = spawn_worker(&files, "finish", &["--lease-ms", "1500"]);
    let out = tokio::task::spawn_blocking(move || {
        wait_with_deadline(recovering, Duration::from_secs(120))
    })
    .await
    .expect("wait for the recovering worker");
    assert_success(&out);

    let job = storage.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.attempt, 2,
        "reclaimed once, finished on the second attempt"
    );
    let runs = executions(&files.log());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, id);
    assert_eq!(runs[0].1, 2);
    assert_ne!(runs[0].2, crashed_pid);
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}

/// Tells the test when the waiting queue's storage answered `watch_job`: the waiter has
/// read its job as unfinished.
struct Watched(Arc<tokio::sync::Notify>);

impl StorageLayer for Watched {
    fn on_call(&self, call: &StorageCall<'_>) {
        if call.operation == "watch_job" && call.error.is_none() {
            self.0.notify_one();
        }
    }
}

/// A waiter in this process is woken through the commit watcher when a worker in another
/// OS process finishes its job. It polls once an hour, so only the watcher can wake it
/// within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_another_process_finishes_the_job() {
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let seen = Arc::new(tokio::sync::Notify::new());
    let waiting = Queue::with_layers(
        Arc::new(storage.clone()),
        vec![Arc::new(Watched(seen.clone()))],
    );
    waiting.set_wait_poll_interval(Duration::from_secs(3600));
    let bound = Duration::from_secs(120);
    let id = storage
        .enqueue(NewJob::new("record", json!("await me")))
        .await
        .expect("enqueue")
        .id;
    let waiter = {
        let q = waiting.clone();
        tokio::spawn(async move { q.wait_for::<()>(id, bound).await })
    };
    seen.notified().await;
    let out = wait_with_deadline(spawn_worker(&files, "drain", &[]), bound);
    assert_success(&out);
    waiter.await.expect("waiter").expect("completed elsewhere");
    let runs = executions(&files.log());
    assert_eq!(runs.len(), 1);
    assert_ne!(runs[0].2, std::process::id(), "run by the other process");
    storage.close().await;
}

/// A key's running limit holds across processes on one file: two worker processes with
/// eight slots each run 24 jobs of one key limited to 3, each job holding its slot until
/// three run; the logged starts and ends never have more than three open at once, and
/// reach three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limit_caps_running_jobs_across_processes() {
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let queue = durable_jobs::Queue::new(std::sync::Arc::new(storage.clone()));
    queue.set_key_limit(capped::KEY, 3).await.expect("limit");
    let n = 24;
    storage
        .enqueue_many(capped::jobs(n))
        .await
        .expect("enqueue");
    let extra = ["--concurrency", "8", "--limit", "3"];
    let a = spawn_worker(&files, "capped", &extra);
    let b = spawn_worker(&files, "capped", &extra);
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            wait_with_deadline(a, Duration::from_secs(120)),
            wait_with_deadline(b, Duration::from_secs(120)),
        )
    })
    .await
    .expect("wait for workers");
    assert_success(&a);
    assert_success(&b);
    assert_eq!(reported_completed(&a) + reported_completed(&b), n as u64);
    let text = std::fs::read_to_string(files.log()).expect("log");
    let started: Vec<bool> = text
        .lines()
        .map(|l| match l.split(' ').next() {
            Some("start") => true,
            Some("end") => false,
            _ => panic!("malformed log line `{l}`"),
        })
        .collect();
    assert_eq!(started.len(), 2 * n, "a start and an end per job");
    assert_eq!(capped::max_overlap(&started), 3, "{text}");
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}

/// A queue's rate limit holds across processes on one file: two draining worker
/// processes start exactly 5 of 40 jobs of a queue limited to 5 starts per hour, then
/// find nothing more to claim; the other 35 wait for the next window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_limit_caps_starts_across_processes() {
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let queue = durable_jobs::Queue::new(std::sync::Arc::new(storage.clone()));
    queue
        .set_queue_rate_limit("default", 5, Duration::from_secs(3600))
        .await
        .expect("limit");
    let n = 40;
    storage
        .enqueue_many((0..n).map(|i| NewJob::new("record", json!(i))).collect())
        .await
        .expect("enqueue");
    let a = spawn_worker(&files, "drain", &["--concurrency", "8"]);
    let b = spawn_worker(&files, "drain", &["--concurrency", "8"]);
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            wait_with_deadline(a, Duration::from_secs(120)),
            wait_with_deadline(b, Duration::from_secs(120)),
        )
    })
    .await
    .expect("wait for workers");
    assert_success(&a);
    assert_success(&b);
    assert_eq!(reported_completed(&a) + reported_completed(&b), 5);
    assert_eq!(executions(&files.log()).len(), 5);
    let mut counts: Vec<(JobStatus, u64)> = storage
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
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}
