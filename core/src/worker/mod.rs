//! Workers: claim jobs from storage and run them.

mod claim;
mod complete;
mod execute;
mod heartbeat;
mod options;
pub(crate) mod shared;

pub use options::{
    QueueConfig, WorkerOptions, DEFAULT_CLAIMS_IN_FLIGHT, DEFAULT_COMPLETION_BATCH,
    DEFAULT_COMPLETION_WRITERS, DEFAULT_CONCURRENCY, DEFAULT_LEASE_DURATION,
    DEFAULT_MAX_CLAIM_BATCH, DEFAULT_POLL_INTERVAL, DEFAULT_SCHEDULER_INTERVAL,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_SWEEP_INTERVAL,
};
pub use shared::WorkerReport;

use crate::error::{Error, Result};
use crate::maintenance::{lease_sweeper, scheduler};
use crate::queue::Queue;
use shared::Shared;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Runs a queue's jobs: several routing queues, each with its own concurrency.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), durable_jobs::Error> {
/// use durable_jobs::{JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
/// use std::sync::Arc;
/// let queue = Queue::new(Arc::new(durable_jobs_memory::MemoryStorage::new()));
/// queue.register("add", |_ctx: JobContext, (a, b): (i64, i64)| async move { Ok::<_, TaskError>(a + b) });
/// let id = queue.enqueue("add", &(2, 3), JobOptions::new()).await?;
/// let worker = Worker::new(queue.clone(), WorkerOptions::new().queue("default", 4))?;
/// let report = worker.drain().await?;
/// assert_eq!(report.completed, 1);
/// assert_eq!(queue.get_job(id).await?.and_then(|j| j.result), Some(serde_json::json!(5)));
/// # Ok(()) }
/// ```
pub struct Worker {
    queue: Queue,
    opts: WorkerOptions,
    name: String,
    shutdown: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("queues", &self.opts.queues)
            .finish()
    }
}

/// Asks a running worker to shut down gracefully. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Stops claiming, waits up to the grace period for running jobs, and returns the rest
    /// unfinished without spending an attempt.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl Worker {
    /// A worker for `queue` with `options`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] or [`Error::InvalidQueueName`] for bad options, an invalid
    /// registered task name, or a queue with no handlers registered.
    pub fn new(queue: Queue, options: WorkerOptions) -> Result<Self> {
        let opts = options.validate()?;
        if let Some(e) = queue.registration_errors().into_iter().next() {
            return Err(Error::InvalidOption {
                option: "task",
                message: e,
            });
        }
        if !queue.has_user_handlers() {
            return Err(Error::InvalidOption {
                option: "task",
                message:
                    "the queue has no registered handlers; register one before starting a worker"
                        .into(),
            });
        }
        let name = opts.name.clone().unwrap_or_else(|| {
            format!(
                "worker-{}-{:06x}",
                std::process::id(),
                crate::job::new_lease_token() & 0xff_ffff
            )
        });
        let (tx, _) = watch::channel(false);
        Ok(Worker {
            queue,
            opts,
            name,
            shutdown: Arc::new(tx),
        })
    }

    /// The worker's name, recorded on the jobs it claims.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle that shuts this worker down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until [`ShutdownHandle::shutdown`] is called, then shuts down gracefully.
    ///
    /// # Errors
    /// None today; storage errors are logged and retried while the worker keeps running.
    pub async fn run(&self) -> Result<WorkerReport> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Runs until `signal` resolves (or the shutdown handle fires), then shuts down
    /// gracefully.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn run_until(&self, signal: impl Future<Output = ()>) -> Result<WorkerReport> {
        let shared = self.start();
        let handles = self.spawn_tasks(&shared);
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            _ = signal => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        Ok(self.finish(shared, handles).await)
    }

    /// Runs until Ctrl-C (SIGINT) or, on Unix, SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn run_until_signal(&self) -> Result<WorkerReport> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until no job is claimable right now and none is running, then returns what
    /// it did. Jobs due later (delays, retry backoff) stay for a later run.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn drain(&self) -> Result<WorkerReport> {
        let shared = self.start();
        lease_sweeper::sweep_once(&shared).await;
        if self.opts.scheduler {
            scheduler::pass(&shared).await;
        }
        let handles = self.spawn_tasks(&shared);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let progressed = shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if shared.is_drained() || *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = progressed => {}
                _ = shutdown.changed() => {}
            }
        }
        Ok(self.finish(shared, handles).await)
    }

    fn start(&self) -> Arc<Shared> {
        Arc::new(Shared::new(
            self.queue.clone(),
            self.opts.clone(),
            self.name.clone(),
        ))
    }

    fn spawn_tasks(&self, shared: &Arc<Shared>) -> Tasks {
        let (tx, rx) = mpsc::unbounded_channel();
        let loops = self
            .opts
            .queues
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                tokio::spawn(claim::run_queue(shared.clone(), i, cfg.clone(), tx.clone()))
            })
            .collect();
        Tasks {
            loops,
            completer: tokio::spawn(complete::run_completer(shared.clone(), rx)),
            heartbeat: tokio::spawn(heartbeat::run_heartbeats(shared.clone())),
            sweeper: tokio::spawn(lease_sweeper::run_sweeper(shared.clone())),
            scheduler: self
                .opts
                .scheduler
                .then(|| tokio::spawn(scheduler::run_scheduler(shared.clone()))),
        }
    }

    async fn finish(&self, shared: Arc<Shared>, tasks: Tasks) -> WorkerReport {
        shared.stopping.send_replace(true);
        for l in tasks.loops {
            if let Err(e) = l.await {
                tracing::error!(error = %e, "queue loop ended abnormally");
            }
        }
        // Every loop has dropped its sender, so the completer ends once it has written
        // the last outcomes.
        if let Err(e) = tasks.completer.await {
            tracing::error!(error = %e, "completer ended abnormally");
        }
        // A finished run leaves the handle ready for the next one.
        self.shutdown.send_replace(false);
        for t in [tasks.heartbeat, tasks.sweeper]
            .into_iter()
            .chain(tasks.scheduler)
        {
            let _ = t.await;
        }
        shared.report()
    }
}

struct Tasks {
    loops: Vec<tokio::task::JoinHandle<()>>,
    completer: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
