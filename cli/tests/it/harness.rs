//! Running the built `durable-jobs` binary, and seeding databases through the library.

use durable_jobs::{
    call, DequeueParams, FanOut, JobContext, JobId, JobOptions, JobStatus, Queue, Schedule,
    TaskError, Worker, WorkerOptions, WorkerQueue, WorkerRecord,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Out {
    /// The exit code.
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Out {
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Asserts `code`, and that stderr holds exactly one error line (notes aside) with no
    /// panic or backtrace; returns that line.
    #[track_caller]
    pub fn fails(&self, code: i32) -> String {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("note:"))
            .collect();
        assert_eq!(lines.len(), 1, "expected one error line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(bad), "{self:#?}");
        }
        lines[0].to_string()
    }

    /// Parses stdout as exactly one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }
}

/// Runs the binary with `args`, with no `DATABASE_URL` from the environment.
pub fn run(args: &[&str]) -> Out {
    run_env(args, &[])
}

/// Runs the binary with `args` and extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durable-jobs"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the durable-jobs binary");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `--database` (and `--schema`) arguments that name one database.
#[derive(Debug, Clone)]
pub struct DbArgs(pub Vec<String>);

impl DbArgs {
    /// Runs the binary on this database with `args`.
    pub fn run(&self, args: &[&str]) -> Out {
        let mut all: Vec<&str> = self.0.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run(&all)
    }
}

/// The jobs a seeded database holds, one or more in each status.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// A plain job that completed, tagged `vip`.
    pub completed: JobId,
    /// A job that failed for good.
    pub failed: JobId,
    /// A job that waits for its next attempt an hour from now.
    pub retrying: JobId,
    /// A job held by a worker (`ghost-worker`) that never finishes it.
    pub running: JobId,
    /// A workflow suspended until it receives the signal `go`.
    pub waiting: JobId,
    /// A pending job in the paused queue `emails`, tagged `newsletter`.
    pub pending: JobId,
    /// A job cancelled before it ran.
    pub cancelled: JobId,
    /// A finished workflow with a call, a step and two children.
    pub workflow: JobId,
    /// The workflow's children.
    pub children: Vec<JobId>,
}

/// The queue with the handlers the seed uses (the tests' own "application").
pub fn app_queue(storage: durable_jobs::DynStorage) -> Queue {
    let queue = Queue::new(storage);
    queue.register("echo", |_ctx: JobContext, v: Value| async move {
        Ok::<_, TaskError>(v)
    });
    queue.register("charge", |_ctx: JobContext, cents: u64| async move {
        if cents == 0 {
            Err(TaskError::no_retry("card declined: amount is zero"))
        } else {
            Ok(format!("charged {cents}"))
        }
    });
    queue.register("flaky", |_ctx: JobContext, _v: Value| async move {
        Err::<Value, _>(TaskError::retry_after(
            Duration::from_secs(3600),
            "upstream timed out",
        ))
    });
    queue.register("await_go", |ctx: JobContext, _v: Value| async move {
        let got: Value = ctx.wait_for_signal("go").await?;
        Ok::<_, TaskError>(json!({ "got": got }))
    });
    queue.register("checkout", |ctx: JobContext, cents: u64| async move {
        let receipt: String = call(&ctx, "charge", &cents).await?;
        let reserved: String = ctx
            .step("reserve", |_ctx| async move { Ok("reserved".to_string()) })
            .await?;
        ctx.progress(&json!({ "step": "reserved" })).await?;
        let notes = ctx
            .fan_out::<Value, _>(
                "echo",
                vec![json!("mail"), json!("sms")],
                // The seed's first worker forbids this flag, so the children cannot
                // finish before the join looks: the workflow suspends once, always.
                JobOptions::new().flag(AFTER_JOIN),
                FanOut::CollectAll,
            )
            .await?;
        Ok::<_, TaskError>(
            json!({ "receipt": receipt, "reserved": reserved, "notes": notes.len() }),
        )
    });
    queue
}

/// The flag on the workflow's children that the seed's first worker does not run.
const AFTER_JOIN: &str = "after-join";

/// Fills a migrated storage with jobs in every status, a workflow with checkpoints and
/// children, a schedule, a paused queue, and two registered workers (one dead).
pub async fn seed(storage: durable_jobs::DynStorage) -> Seeded {
    let queue = app_queue(storage.clone());
    let later = || JobOptions::new().delay(Duration::from_secs(3600));
    let completed = queue
        .enqueue(
            "echo",
            &json!({"hello": "world"}),
            JobOptions::new().tag("vip"),
        )
        .await
        .unwrap();
    let failed = queue
        .enqueue("charge", &0u64, JobOptions::new())
        .await
        .unwrap();
    let retrying = queue
        .enqueue("flaky", &json!(1), JobOptions::new().retries(5))
        .await
        .unwrap();
    let waiting = queue
        .enqueue("await_go", &json!(null), JobOptions::new())
        .await
        .unwrap();
    let workflow = queue
        .enqueue("checkout", &1299u64, JobOptions::new())
        .await
        .unwrap();
    let cancelled = queue.enqueue("echo", &json!(3), later()).await.unwrap();
    assert!(queue.cancel(cancelled).await.unwrap());
    queue.pause_queue("emails").await.unwrap();
    let pending = queue
        .enqueue(
            "echo",
            &json!({"to": "a@example.com"}),
            JobOptions::new().queue("emails").tag("newsletter"),
        )
        .await
        .unwrap();

    // First without the children (the workflow runs to its join and suspends), then
    // with them (they finish and wake it): every run sees the same history.
    for forbidden in [vec![AFTER_JOIN], vec![]] {
        let worker = Worker::new(
            queue.clone(),
            WorkerOptions::new()
                .queue("default", 4)
                .scheduler(false)
                .forbid_flags(forbidden)
                .poll_interval(Duration::from_millis(20)),
        )
        .unwrap();
        worker.drain().await.unwrap();
    }

    // A job a worker claimed and still holds: running, with a lease.
    let running = queue
        .enqueue("echo", &json!("held"), JobOptions::new().queue("held"))
        .await
        .unwrap();
    let claimed = storage
        .dequeue(DequeueParams {
            queues: vec!["held".into()],
            tasks: vec!["echo".into()],
            limit: 1,
            lease_duration: Duration::from_secs(3600),
            holder: "ghost-worker".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    queue
        .add_schedule(
            "nightly-report",
            Schedule::cron("0 3 * * *").task("echo", &json!({"report": true})),
        )
        .await
        .unwrap();
    for (name, lease_ms) in [("alive-worker", 3_600_000), ("dead-worker", 1)] {
        let now = storage.now().await.unwrap();
        storage
            .register_worker(WorkerRecord {
                name: name.into(),
                host: "test-host".into(),
                pid: 4242,
                queues: vec![WorkerQueue {
                    name: "default".into(),
                    concurrency: 4,
                }],
                version: "0.1.0".into(),
                started_at: now,
                last_seen: now,
                lease_ms,
            })
            .await
            .unwrap();
    }
    // Let the dead worker's one-millisecond lease run out.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let children: Vec<JobId> = queue
        .list_jobs(durable_jobs::JobFilter {
            parent_id: Some(workflow),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    let seeded = Seeded {
        completed,
        failed,
        retrying,
        running,
        waiting,
        pending,
        cancelled,
        workflow,
        children,
    };
    for (id, status) in [
        (seeded.completed, JobStatus::Completed),
        (seeded.failed, JobStatus::Failed),
        (seeded.retrying, JobStatus::Retrying),
        (seeded.running, JobStatus::Running),
        (seeded.waiting, JobStatus::Waiting),
        (seeded.pending, JobStatus::Pending),
        (seeded.cancelled, JobStatus::Cancelled),
        (seeded.workflow, JobStatus::Completed),
    ] {
        let job = queue.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.status, status, "seeded job {id}: {job:?}");
    }
    assert_eq!(seeded.children.len(), 2);
    seeded
}
