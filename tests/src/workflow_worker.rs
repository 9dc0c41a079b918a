//! The worker side of the workflow crash tests, shared by `sqlite_workflow_worker` and
//! `pg_workflow_worker`: the logged five-step and sleeping workflows, and the run modes.
//!
//! Tasks on queue `default`:
//! - `five_steps` (payload: an integer `n`): five checkpointed steps `s0`..`s4`; step `k`
//!   returns `10 n + k`, and the job returns the five values. Each step execution appends
//!   one line `<job id> <step> <pid> <checkpointed>` to the log with a single `O_APPEND`
//!   write before it returns, where `<checkpointed>` is 1 when the step's checkpoint
//!   already existed as the step started (read fresh from storage, not from the engine: a
//!   step that runs although its checkpoint exists is the bug the tests hunt). Half of the
//!   step time passes before the write and half after it, so a kill can land between the
//!   side effect and its checkpoint.
//! - `sleeper` (payload: milliseconds): step `before`, a durable `ctx.sleep`, step
//!   `after`; returns the milliseconds. Logged the same way.
//!
//! Modes: `run` works until killed; `finish` works until no job is unfinished, then
//! returns its report.

use durable_jobs::{DynStorage, JobContext, Queue, TaskError, Worker, WorkerOptions, WorkerReport};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a workflow worker process runs.
#[derive(Debug, Clone)]
pub struct WorkflowWorker {
    /// The side-effect log.
    pub log: std::path::PathBuf,
    /// `run` (until killed) or `finish` (until every job finished).
    pub mode: String,
    /// The lease each claim takes.
    pub lease: Duration,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long one step's side effect takes.
    pub step: Duration,
}

/// What a step execution needs to record itself.
#[derive(Clone)]
struct Recorder {
    log: Arc<File>,
    storage: DynStorage,
    pause: Duration,
}

impl Recorder {
    /// The step's side effect: notes whether its checkpoint already existed (read from
    /// storage now), then appends its line in one `O_APPEND` write.
    async fn record(&self, ctx: &JobContext, step: &str) -> Result<(), TaskError> {
        // The step's own scope is its checkpoint key (the closure runs in a context
        // nested under it).
        let key = ctx.scope().to_string();
        let existed = self
            .storage
            .list_checkpoints(ctx.job_id())
            .await
            .map_err(|e| TaskError::retry(format!("read checkpoints: {e}")))?
            .iter()
            .any(|c| c.key == key);
        tokio::time::sleep(self.pause / 2).await;
        let line = format!(
            "{} {} {} {}\n",
            ctx.job_id(),
            step,
            std::process::id(),
            u8::from(existed)
        );
        (&*self.log)
            .write_all(line.as_bytes())
            .map_err(|e| TaskError::retry(format!("log: {e}")))?;
        tokio::time::sleep(self.pause / 2).await;
        Ok(())
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl WorkflowWorker {
    /// Registers the workflows on `storage` and works in the chosen mode.
    ///
    /// # Errors
    /// An unknown mode, a log that cannot be opened, or an engine error.
    pub async fn run(
        &self,
        storage: DynStorage,
    ) -> Result<WorkerReport, Box<dyn std::error::Error>> {
        let queue = Queue::new(storage.clone());
        let rec = Recorder {
            log: Arc::new(open_log(&self.log)?),
            storage: storage.clone(),
            pause: self.step,
        };
        let r = rec.clone();
        queue.register("five_steps", move |ctx: JobContext, n: i64| {
            let r = r.clone();
            async move {
                let mut out = Vec::with_capacity(5);
                for k in 0..5i64 {
                    let r = r.clone();
                    let name = format!("s{k}");
                    let v: i64 = ctx
                        .step(&name.clone(), move |sctx| async move {
                            r.record(&sctx, &name).await?;
                            Ok::<_, TaskError>(10 * n + k)
                        })
                        .await?;
                    out.push(v);
                }
                Ok::<_, TaskError>(out)
            }
        });
        queue.register("sleeper", move |ctx: JobContext, ms: u64| {
            let r = rec.clone();
            async move {
                let r2 = r.clone();
                ctx.step("before", move |sctx| async move {
                    r2.record(&sctx, "before").await
                })
                .await?;
                ctx.sleep(Duration::from_millis(ms)).await?;
                ctx.step("after", move |sctx| async move {
                    r.record(&sctx, "after").await
                })
                .await?;
                Ok::<_, TaskError>(ms)
            }
        });
        let options = WorkerOptions::new()
            .queue("default", self.concurrency)
            .lease_duration(self.lease)
            .sweep_interval(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(50));
        let worker = Worker::new(queue, options)?;
        let report = match self.mode.as_str() {
            "run" => worker.run().await?,
            "finish" => {
                worker
                    .run_until(async move {
                        while !all_finished(&storage).await {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })
                    .await?
            }
            other => return Err(format!("unknown mode {other}").into()),
        };
        println!(
            "completed={} failed={} retried={} released={} lost={}",
            report.completed, report.failed, report.retried, report.released, report.lost
        );
        Ok(report)
    }
}

async fn all_finished(s: &DynStorage) -> bool {
    match s.counts().await {
        Ok(counts) => counts.iter().all(|c| c.status.is_finished()),
        Err(e) => {
            eprintln!("workflow worker: counts: {e}");
            false
        }
    }
}
