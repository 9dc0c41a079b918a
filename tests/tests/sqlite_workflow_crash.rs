//! Durable workflows on SQLite survive SIGKILLed worker processes: checkpointed steps
//! never run again, unfinished ones run again only when a kill cut them off, and a
//! durable sleep resumes on time after every worker restarted.
//!
//! Set `SQLITE_CRASH_SEED` to replay a run's kill schedule (the seed is printed).

use durable_jobs::{CheckpointOutcome, JobId, JobStatus, NewJob, Storage};
use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::crash::{
    assert_success, executions, kill, seed, verify_workflows, wait_with_deadline, Rng,
};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_MS: &str = "2000";
const CONCURRENCY: usize = 4;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::Builder::new()
                .prefix("durable-jobs-sqlite-wf-")
                .tempdir()
                .expect("temporary directory"),
        }
    }
    fn db(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("steps.log")
    }
}

fn spawn_worker(files: &Files, mode: &str, step_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sqlite_workflow_worker"))
        .arg("--db")
        .arg(files.db())
        .arg("--log")
        .arg(files.log())
        .args(["--mode", mode, "--lease-ms", LEASE_MS])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--step-ms", &step_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sqlite_workflow_worker")
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("open for the integrity check");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

async fn unfinished(storage: &SqliteStorage) -> u64 {
    storage
        .counts()
        .await
        .expect("counts")
        .iter()
        .filter(|c| !c.status.is_finished())
        .map(|c| c.count)
        .sum()
}

/// Twenty five-step workflows; worker processes SIGKILLed at random moments, over and
/// over; then one worker finishes. Every workflow completes with the right result, every
/// step has its checkpoint, no step ever ran while its checkpoint existed, and every
/// repeated execution of a step was cut off by a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_never_rerun_checkpointed_steps() {
    const JOBS: i64 = 20;
    const KILLS: usize = 25;
    const STEP_MS: u64 = 60;
    let seed = seed("SQLITE_CRASH_SEED");
    println!("SQLITE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let ids: Vec<JobId> = storage
        .enqueue_many(
            (0..JOBS)
                .map(|n| {
                    let mut j = NewJob::new("five_steps", json!(n));
                    // Reclaims after kills spend attempts; none may run out.
                    j.max_attempts = 1000;
                    j
                })
                .collect(),
        )
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();

    let mut killed: HashSet<u32> = HashSet::new();
    let mut kills_with_work_left = 0;
    for _ in 0..KILLS {
        if unfinished(&storage).await > 0 {
            kills_with_work_left += 1;
        }
        let child = spawn_worker(&files, "run", STEP_MS);
        killed.insert(child.id());
        // The kill schedule is the test's input: a random moment in the worker's life
        // (after its start-up, which takes a few tens of milliseconds).
        tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
        kill(child);
        assert_eq!(integrity(&files.db()), "ok", "file intact after a kill");
    }
    let before_final = executions(&files.log()).len();
    let last = spawn_worker(&files, "finish", STEP_MS);
    let last_pid = last.id();
    let out =
        tokio::task::spawn_blocking(move || wait_with_deadline(last, Duration::from_secs(180)))
            .await
            .expect("wait for the final worker");
    assert_success(&out);

    let runs = executions(&files.log());
    let duplicates = verify_workflows(&storage, &ids, &runs, &killed, CONCURRENCY).await;
    println!(
        "kills={KILLS} (with work left: {kills_with_work_left}) executions={} \
         (before the final worker: {before_final}) duplicates={duplicates} final pid={last_pid}",
        runs.len()
    );
    // The kill schedule must have hit running workflows, or the test proved nothing.
    assert!(
        kills_with_work_left >= 5,
        "only {kills_with_work_left} kills landed while work was left"
    );
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}

/// A workflow sleeping durably while every worker is SIGKILLed resumes on a new worker
/// at its wake time, not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sleep_resumes_on_time_after_every_worker_restarted() {
    const SLEEP_MS: u64 = 2000;
    let files = Files::new();
    let storage = SqliteStorage::open(files.db()).await.expect("open");
    let id = storage
        .enqueue(NewJob::new("sleeper", json!(SLEEP_MS)))
        .await
        .expect("enqueue")
        .id;
    let first = [
        spawn_worker(&files, "run", 0),
        spawn_worker(&files, "run", 0),
    ];

    // Wait until the workflow is asleep (waiting, its wake time checkpointed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = storage.get_job(id).await.expect("get").expect("exists");
        if job.status == JobStatus::Waiting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workflow never went to sleep: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for child in first {
        kill(child);
    }
    let cps = storage.list_checkpoints(id).await.expect("checkpoints");
    let sleep = cps
        .iter()
        .find(|c| c.name == "sleep")
        .unwrap_or_else(|| panic!("no sleep checkpoint in {cps:?}"));
    let wake_at: chrono::DateTime<chrono::Utc> = match &sleep.outcome {
        CheckpointOutcome::Ok(v) => serde_json::from_value(v.clone()).expect("a wake time"),
        other => panic!("sleep checkpoint holds {other:?}"),
    };
    let job = storage.get_job(id).await.expect("get").expect("exists");
    assert_eq!(
        job.status,
        JobStatus::Waiting,
        "still asleep after the kills"
    );
    // Stored in whole microseconds, rounded up so it is never due early.
    let due_after = job.run_at - wake_at;
    assert!(
        due_after >= chrono::Duration::zero() && due_after < chrono::Duration::microseconds(1),
        "due at its wake time {wake_at}, found {}",
        job.run_at
    );

    let next = spawn_worker(&files, "finish", 0);
    let out =
        tokio::task::spawn_blocking(move || wait_with_deadline(next, Duration::from_secs(60)))
            .await
            .expect("wait for the new worker");
    assert_success(&out);

    let job = storage.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    assert_eq!(job.result, Some(json!(SLEEP_MS)));
    let done = job.completed_at.expect("completed_at");
    let late = done - wake_at;
    println!(
        "completed {} ms after its wake time",
        late.num_milliseconds()
    );
    assert!(late >= chrono::Duration::zero(), "woke early: {late}");
    assert!(
        late < chrono::Duration::seconds(3),
        "woke {late} after its wake time"
    );
    let runs = executions(&files.log());
    let steps: Vec<&str> = runs.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(steps, vec!["before", "after"], "{runs:?}");
    storage.close().await;
    assert_eq!(integrity(&files.db()), "ok");
}
