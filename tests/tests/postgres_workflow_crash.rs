//! Durable workflows on PostgreSQL survive SIGKILLed worker processes: checkpointed
//! steps never run again, unfinished ones run again only when a kill cut them off, and a
//! durable sleep resumes on time after every worker restarted. The PostgreSQL twin of
//! `sqlite_workflow_crash.rs`; each test works in a fresh schema, dropped at its end.
//!
//! Set `PG_CRASH_SEED` to replay a run's kill schedule (the seed is printed).

use durable_jobs::{CheckpointOutcome, JobId, JobStatus, NewJob, Storage};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_postgres::PostgresStorage;
use durable_jobs_tests::crash::{
    assert_success, executions, kill, seed, verify_workflows, wait_with_deadline, Rng,
};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_MS: &str = "2000";
const CONCURRENCY: usize = 4;

/// A test's world: a fresh schema and a directory for the side-effect log.
struct Env {
    schema: TestSchema,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        Env {
            schema: TestSchema::new().await.expect("test schema"),
            dir: tempfile::Builder::new()
                .prefix("durable-jobs-pg-wf-")
                .tempdir()
                .expect("temporary directory"),
        }
    }
    fn storage(&self) -> &PostgresStorage {
        self.schema.storage()
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("steps.log")
    }
    /// Drops the schema (the directory goes with `self`).
    async fn finish(self) {
        self.schema
            .drop_schema()
            .await
            .expect("drop the test schema");
    }
}

fn spawn_worker(env: &Env, mode: &str, step_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pg_workflow_worker"))
        .args(["--url", env.schema.url(), "--schema", env.schema.schema()])
        .arg("--log")
        .arg(env.log())
        .args(["--mode", mode, "--lease-ms", LEASE_MS])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--step-ms", &step_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pg_workflow_worker")
}

async fn unfinished(storage: &PostgresStorage) -> u64 {
    storage
        .counts()
        .await
        .expect("counts")
        .iter()
        .filter(|c| !c.status.is_finished())
        .map(|c| c.count)
        .sum()
}

/// Thirty five-step workflows; worker processes SIGKILLed at random moments, over and
/// over; then one worker finishes. Every workflow completes with the right result, every
/// step has its checkpoint, no step ever ran while its checkpoint existed, and every
/// repeated execution of a step was cut off by a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_never_rerun_checkpointed_steps() {
    const JOBS: i64 = 30;
    const KILLS: usize = 25;
    const STEP_MS: u64 = 100;
    let seed = seed("PG_CRASH_SEED");
    println!("PG_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let env = Env::new().await;
    let storage = env.storage();
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
        if unfinished(storage).await > 0 {
            kills_with_work_left += 1;
        }
        let child = spawn_worker(&env, "run", STEP_MS);
        killed.insert(child.id());
        // The kill schedule is the test's input: a random moment in the worker's life
        // (after its start-up: connecting and checking migrations takes tens of ms).
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        kill(child);
    }
    let before_final = executions(&env.log()).len();
    let left_for_final = unfinished(storage).await;
    let last = spawn_worker(&env, "finish", STEP_MS);
    let last_pid = last.id();
    let out =
        tokio::task::spawn_blocking(move || wait_with_deadline(last, Duration::from_secs(180)))
            .await
            .expect("wait for the final worker");
    assert_success(&out);

    let runs = executions(&env.log());
    let duplicates = verify_workflows(storage, &ids, &runs, &killed, CONCURRENCY).await;
    println!(
        "kills={KILLS} (with work left: {kills_with_work_left}) executions={} \
         (before the final worker: {before_final}) duplicates={duplicates} \
         jobs left for the final worker={left_for_final} final pid={last_pid}",
        runs.len()
    );
    // The kill schedule must have hit running workflows, or the test proved nothing.
    assert!(
        kills_with_work_left >= 5,
        "only {kills_with_work_left} kills landed while work was left"
    );
    // The kills left no lease and no job behind.
    assert_eq!(unfinished(storage).await, 0);
    env.finish().await;
}

/// A workflow sleeping durably while every worker is SIGKILLed resumes on a new worker
/// at its wake time, not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sleep_resumes_on_time_after_every_worker_restarted() {
    const SLEEP_MS: u64 = 2000;
    let env = Env::new().await;
    let storage = env.storage();
    let id = storage
        .enqueue(NewJob::new("sleeper", json!(SLEEP_MS)))
        .await
        .expect("enqueue")
        .id;
    let first = [spawn_worker(&env, "run", 0), spawn_worker(&env, "run", 0)];

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
    // Due at its wake time, stored in whole microseconds and never early.
    let due_after = job.run_at - wake_at;
    assert!(
        due_after >= chrono::Duration::zero() && due_after < chrono::Duration::microseconds(1),
        "due at its wake time {wake_at}, found {}",
        job.run_at
    );

    let next = spawn_worker(&env, "finish", 0);
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
    let runs = executions(&env.log());
    let steps: Vec<&str> = runs.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(steps, vec!["before", "after"], "{runs:?}");
    env.finish().await;
}
