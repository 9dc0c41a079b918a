//! Durable workflows on PostgreSQL survive SIGKILLed worker processes: checkpointed
//! steps never run again, unfinished ones run again only when a kill cut them off, and a
//! durable sleep resumes on time after every worker restarted. The PostgreSQL twin of
//! `sqlite_workflow_crash.rs`; each test works in a fresh schema, dropped at its end.
//!
//! Set `PG_CRASH_SEED` to replay a run's kill schedule (the seed is printed).

use durable_jobs::{CheckpointOutcome, JobId, JobStatus, NewJob, Storage};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_postgres::PostgresStorage;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// SIGKILLs a worker and reaps it. A worker that already exited on its own is a failure
/// (`run` mode never exits by itself).
fn kill(mut child: Child) {
    if let Some(status) = child.try_wait().expect("poll child") {
        let out = child.wait_with_output().expect("collect output");
        panic!(
            "worker exited by itself ({status}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.kill().expect("SIGKILL the worker");
    child.wait().expect("reap the worker");
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

/// One logged step execution.
#[derive(Debug, Clone, PartialEq)]
struct Execution {
    job: JobId,
    step: String,
    pid: u32,
    /// The step's checkpoint already existed when it started.
    checkpointed: bool,
}

fn executions(log: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "malformed log line `{l}`");
            Execution {
                job: f[0].parse().expect("job id"),
                step: f[1].to_string(),
                pid: f[2].parse().expect("pid"),
                checkpointed: f[3] == "1",
            }
        })
        .collect()
}

/// A small seeded generator (SplitMix64), so a failing kill schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn seed() -> u64 {
    match std::env::var("PG_CRASH_SEED") {
        Ok(s) => s.parse().expect("PG_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
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
    let seed = seed();
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

    // Every workflow completed with the right result and all five checkpoints.
    for (n, id) in ids.iter().enumerate() {
        let job = storage.get_job(*id).await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Completed, "job {id}: {job:?}");
        let n = n as i64;
        let want: Vec<i64> = (0..5).map(|k| 10 * n + k).collect();
        assert_eq!(job.result, Some(json!(want)), "job {id}");
        let cps = storage.checkpoints(*id).await.expect("checkpoints");
        let got: Vec<(String, String, CheckpointOutcome)> = cps
            .into_iter()
            .map(|c| (c.key, c.name, c.outcome))
            .collect();
        let expected: Vec<(String, String, CheckpointOutcome)> = (0..5)
            .map(|k| {
                (
                    k.to_string(),
                    format!("s{k}"),
                    CheckpointOutcome::Ok(json!(10 * n + k)),
                )
            })
            .collect();
        assert_eq!(got, expected, "job {id} checkpoints");
    }

    let runs = executions(&env.log());
    // No step ran while its checkpoint existed.
    let stale: Vec<&Execution> = runs.iter().filter(|e| e.checkpointed).collect();
    assert!(
        stale.is_empty(),
        "steps ran after their checkpoint: {stale:?}"
    );
    // Per job, steps ran in order: a step never ran again after a later step started.
    let mut per_step: BTreeMap<(JobId, String), Vec<&Execution>> = BTreeMap::new();
    let mut last_step: HashMap<JobId, String> = HashMap::new();
    for e in &runs {
        if let Some(prev) = last_step.get(&e.job) {
            assert!(
                e.step >= *prev,
                "job {}: step {} ran after step {prev}",
                e.job,
                e.step
            );
        }
        last_step.insert(e.job, e.step.clone());
        per_step.entry((e.job, e.step.clone())).or_default().push(e);
    }
    // Every step ran; every execution but a step's last was cut off by a kill, and a
    // killed process cut off at most one step per job and at most `CONCURRENCY` in all.
    let mut duplicates = 0;
    let mut cut_per_pid: HashMap<u32, Vec<JobId>> = HashMap::new();
    for id in &ids {
        for k in 0..5 {
            let execs = per_step
                .get(&(*id, format!("s{k}")))
                .unwrap_or_else(|| panic!("job {id} step s{k} never ran"));
            for cut in &execs[..execs.len() - 1] {
                assert!(
                    killed.contains(&cut.pid),
                    "job {id} step s{k} ran again although pid {} was not killed: {execs:?}",
                    cut.pid
                );
                cut_per_pid.entry(cut.pid).or_default().push(*id);
                duplicates += 1;
            }
        }
    }
    for (pid, jobs) in &cut_per_pid {
        let distinct: HashSet<&JobId> = jobs.iter().collect();
        assert_eq!(distinct.len(), jobs.len(), "pid {pid} cut one job twice");
        assert!(jobs.len() <= CONCURRENCY, "pid {pid} cut {jobs:?}");
    }
    assert!(duplicates <= KILLS * CONCURRENCY);
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
    let cps = storage.checkpoints(id).await.expect("checkpoints");
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
