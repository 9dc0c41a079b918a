//! A bundle is enqueued all or nothing: a process SIGKILLed part-way through
//! `enqueue_bundle`, over and over, leaves only whole bundles (a tracking job with every
//! member), and every bundle then finishes. On SQLite and on PostgreSQL.
//!
//! Set `BUNDLE_CRASH_SEED` to replay a run's kill schedule (the seed is printed).

use durable_jobs::{
    DynStorage, Job, JobFilter, JobStatus, Queue, TaskError, Worker, WorkerOptions, BUNDLE_TASK,
};
use durable_jobs_postgres::testing::TestSchema;
use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::crash::{kill, seed, Rng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Members per bundle: enough that inserting them takes a while, so a kill often lands
/// inside an enqueue.
const MEMBERS: usize = 300;
/// Processes started and killed.
const ROUNDS: u64 = 8;

/// Starts the enqueuer with `target` flags, waits until it has enqueued at least one
/// bundle (so the next enqueue is under way), lets it run a random few milliseconds more
/// and SIGKILLs it; `ROUNDS` times.
fn enqueue_and_kill(target: &[&str], rng: &mut Rng) {
    for _ in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bundle_enqueuer"))
            .args(target)
            .args(["--members", &MEMBERS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bundle_enqueuer");
        // Kept open until the kill: the enqueuer writes a line per bundle.
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("read the enqueuer's output");
        assert!(
            first.starts_with("bundle "),
            "the enqueuer stopped before its first bundle: {first:?}"
        );
        // The kill moment is the random part of this test: anywhere in the next enqueues.
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        kill(child);
        drop(stdout);
    }
}

/// Every job, page by page.
async fn all_jobs(storage: &DynStorage) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::new();
    loop {
        let page = storage
            .list_jobs(JobFilter {
                after_id: out.last().map(|j| j.id),
                limit: Some(1000),
                ..JobFilter::default()
            })
            .await
            .expect("list jobs");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every bundle is whole: each tracking job has exactly `MEMBERS` members, and every
/// member belongs to a tracking job. Returns the tracking jobs.
async fn whole_bundles(storage: &DynStorage) -> Vec<Job> {
    let jobs = all_jobs(storage).await;
    let trackers: Vec<Job> = jobs
        .iter()
        .filter(|j| j.task == BUNDLE_TASK)
        .cloned()
        .collect();
    let mut members: HashMap<i64, usize> = HashMap::new();
    for j in jobs.iter().filter(|j| j.task != BUNDLE_TASK) {
        let parent = j.parent_id.expect("a member has its bundle as parent");
        *members.entry(parent).or_default() += 1;
    }
    assert!(!trackers.is_empty(), "no bundle was enqueued");
    for t in &trackers {
        assert_eq!(
            members.remove(&t.id).unwrap_or(0),
            MEMBERS,
            "bundle {} is not whole: a kill left part of it",
            t.id
        );
    }
    assert!(members.is_empty(), "members without a bundle: {members:?}");
    trackers
}

/// Runs every job to its end; each bundle must then be completed.
async fn every_bundle_finishes(storage: DynStorage, trackers: &[Job]) {
    let queue = Queue::new(storage);
    queue.register_fn("member", |_: u64| async { Ok::<_, TaskError>(()) });
    let worker = Worker::new(queue.clone(), WorkerOptions::new().queue("default", 16))
        .expect("worker options");
    worker.drain().await.expect("drain");
    for t in trackers {
        let status = queue.bundle_status(t.id).await.expect("bundle status");
        assert_eq!(
            status.status,
            JobStatus::Completed,
            "bundle {} never finished",
            t.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bundles_survive_kills_whole_or_not_at_all() {
    let seed = seed("BUNDLE_CRASH_SEED");
    eprintln!("BUNDLE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::Builder::new()
        .prefix("durable-jobs-bundle-")
        .tempdir()
        .expect("temporary directory");
    let db = dir.path().join("jobs.db");
    // Migrated before any process is killed, so a kill lands in an enqueue.
    SqliteStorage::open(&db)
        .await
        .expect("create the file")
        .close()
        .await;
    let path = db.to_str().expect("a UTF-8 path");
    tokio::task::block_in_place(|| enqueue_and_kill(&["--sqlite", path], &mut rng));
    let storage = SqliteStorage::open(&db).await.expect("reopen");
    let dyn_storage: DynStorage = Arc::new(storage.clone());
    let trackers = whole_bundles(&dyn_storage).await;
    every_bundle_finishes(dyn_storage, &trackers).await;
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bundles_survive_kills_whole_or_not_at_all() {
    let seed = seed("BUNDLE_CRASH_SEED");
    eprintln!("BUNDLE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let schema = TestSchema::new().await.expect("test schema");
    let (url, name) = (schema.url().to_string(), schema.schema().to_string());
    tokio::task::block_in_place(|| enqueue_and_kill(&["--url", &url, "--schema", &name], &mut rng));
    let storage: DynStorage = Arc::new(schema.storage().clone());
    let trackers = whole_bundles(&storage).await;
    every_bundle_finishes(storage, &trackers).await;
    schema.drop_schema().await.expect("drop the test schema");
}
