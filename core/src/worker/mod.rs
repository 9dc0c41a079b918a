//! Workers: claim jobs from storage and run them.

mod claim;
mod claim_order;
mod complete;
mod execute;
mod health;
mod heartbeat;
mod options;
mod prefetch;
mod registry;
pub(crate) mod shared;
mod sizing;
pub(crate) mod threads;
pub(crate) mod timer;

pub use health::{WorkerHealth, WorkerState};
pub use options::{
    QueueConfig, WorkerOptions, DEFAULT_CHECKPOINT_WRITERS, DEFAULT_CLAIMS_IN_FLIGHT,
    DEFAULT_COMPLETION_BATCH, DEFAULT_COMPLETION_WRITERS, DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_DURATION, DEFAULT_MAX_CLAIM_BATCH, DEFAULT_METRICS_INTERVAL,
    DEFAULT_POLL_INTERVAL, DEFAULT_SCHEDULER_INTERVAL, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_SWEEP_INTERVAL, DEFAULT_WORKER_RETENTION,
};
pub use shared::WorkerReport;
pub use sizing::DEFAULT_MAX_PREFETCH;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::maintenance::{lease_sweeper, metrics_sampler, retention, scheduler};
use crate::queue::Queue;
use health::HealthState;
use shared::Shared;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
    health: Arc<HealthState>,
    /// The current run's shared state, for [`Worker::health`].
    current: Mutex<Option<Arc<Shared>>>,
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
            health: Arc::default(),
            current: Mutex::new(None),
        })
    }

    /// The worker's name, recorded on the jobs it claims.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What an application's health endpoint serves: running or stopping, when storage
    /// last answered, when a claim last returned jobs, and the jobs in flight.
    pub fn health(&self) -> WorkerHealth {
        let in_flight = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |s| s.in_flight.load(Ordering::Relaxed));
        self.health.snapshot(&self.name, in_flight)
    }

    /// A handle that shuts this worker down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until [`ShutdownHandle::shutdown`] is called, then shuts down gracefully.
    ///
    /// # Errors
    /// Transient storage errors (an unreachable server, a busy database) are logged and
    /// retried with a growing backoff while the worker keeps running. The worker stops
    /// and returns the error when retrying cannot fix it: a schema that was never
    /// migrated ([`crate::StorageErrorKind::Schema`]) or is newer than this library
    /// ([`Error::SchemaTooNew`]).
    pub async fn run(&self) -> Result<WorkerReport> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Runs until `signal` resolves (or the shutdown handle fires), then shuts down
    /// gracefully.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn run_until(&self, signal: impl Future<Output = ()>) -> Result<WorkerReport> {
        let shared = self.start().await;
        let handles = self.spawn_tasks(&shared);
        let mut shutdown = self.shutdown.subscribe();
        let mut stopping = shared.stopping.subscribe();
        tokio::select! {
            _ = signal => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        self.finish(shared, handles).await
    }

    /// Runs until Ctrl-C (SIGINT) or, on Unix, SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn run_until_signal(&self) -> Result<WorkerReport> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until no job is claimable right now and none is running, then returns what
    /// it did. Jobs due later (delays, retry backoff) stay for a later run. Like a lease
    /// sweep and a scheduler pass, one retention pass runs first.
    ///
    /// # Errors
    /// As [`Worker::run`].
    pub async fn drain(&self) -> Result<WorkerReport> {
        let shared = self.start().await;
        lease_sweeper::sweep_once(&shared).await;
        if self.opts.scheduler {
            scheduler::pass(&shared).await;
        }
        retention::pass(&shared).await;
        shared.draining.store(true, Ordering::SeqCst);
        let handles = self.spawn_tasks(&shared);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let progressed = shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if shared.is_drained() || *shutdown.borrow_and_update() || shared.is_stopping() {
                break;
            }
            tokio::select! {
                _ = progressed => {}
                _ = shutdown.changed() => {}
            }
        }
        self.finish(shared, handles).await
    }

    /// Sets up a run: its shared state, its registry entry and the started event.
    async fn start(&self) -> Arc<Shared> {
        let shared = Arc::new(Shared::new(
            self.queue.clone(),
            self.opts.clone(),
            self.name.clone(),
            self.health.clone(),
        ));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
        self.health.set_state(WorkerState::Running);
        registry::register(&shared).await;
        self.queue.emit(Event::WorkerStarted {
            worker: self.name.clone(),
        });
        shared
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
            metrics: (!self.opts.metrics_interval.is_zero())
                .then(|| tokio::spawn(metrics_sampler::run_sampler(shared.clone()))),
            scheduler: self
                .opts
                .scheduler
                .then(|| tokio::spawn(scheduler::run_scheduler(shared.clone()))),
            retention: (!self.opts.retention.keeps_everything())
                .then(|| tokio::spawn(retention::run_retention(shared.clone()))),
        }
    }

    async fn finish(&self, shared: Arc<Shared>, tasks: Tasks) -> Result<WorkerReport> {
        self.health.set_state(WorkerState::Stopping);
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
        shared.finished.send_replace(true);
        // A finished run leaves the handle ready for the next one.
        self.shutdown.send_replace(false);
        for t in [tasks.heartbeat, tasks.sweeper]
            .into_iter()
            .chain(tasks.scheduler)
            .chain(tasks.metrics)
            .chain(tasks.retention)
        {
            let _ = t.await;
        }
        registry::deregister(&shared).await;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.queue.emit(Event::WorkerStopped {
            worker: self.name.clone(),
        });
        match shared.take_fatal() {
            Some(e) => {
                self.health.set_state(WorkerState::Failed);
                Err(e)
            }
            None => {
                self.health.set_state(WorkerState::Idle);
                Ok(shared.report())
            }
        }
    }
}

struct Tasks {
    loops: Vec<tokio::task::JoinHandle<()>>,
    completer: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<tokio::task::JoinHandle<()>>,
    retention: Option<tokio::task::JoinHandle<()>>,
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
