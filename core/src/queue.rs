//! The queue: where handlers are registered and jobs are enqueued.

use crate::error::{Error, Result};
use crate::event::{Event, EventStream, DEFAULT_EVENT_CAPACITY};
use crate::hook::{HookFn, Hooks};
use crate::idhash::IdBuildHasher;
use crate::instrumented::{InstrumentedStorage, StorageLayer};
use crate::job::{Enqueued, Job, JobId, NewJob};
use crate::options::{validate_task_name, JobOptions};
use crate::retry::RetryPolicy;
use crate::storage::{DynStorage, Storage};
use crate::task::{HandlerEntry, Task, TaskError};
use crate::trace;
use crate::workflow::Determinism;
use crate::workflow::JobContext;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

/// How many times a job may snooze when its task sets no limit
/// ([`Queue::set_max_snoozes`]).
pub const DEFAULT_MAX_SNOOZES: u32 = 100;

/// Handlers, hooks and the event stream over one storage. Cloning shares them all.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), durable_jobs::Error> {
/// use durable_jobs::{JobContext, JobOptions, Queue, TaskError};
/// use std::sync::Arc;
/// let queue = Queue::new(Arc::new(durable_jobs_memory::MemoryStorage::new()));
/// queue.register("greet", |_ctx: JobContext, name: String| async move {
///     Ok::<_, TaskError>(format!("hello {name}"))
/// });
/// let id = queue.enqueue("greet", &"ada", JobOptions::new()).await?;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    inner: Arc<QueueInner>,
}

struct QueueInner {
    storage: InstrumentedStorage,
    /// Looked up once per attempt: task names are the application's, so the fast
    /// hasher serves.
    handlers: RwLock<HashMap<String, Arc<HandlerEntry>, IdBuildHasher>>,
    retry_policies: RwLock<HashMap<String, RetryPolicy>>,
    default_retry: RwLock<RetryPolicy>,
    hooks: RwLock<Arc<Hooks>>,
    events: broadcast::Sender<Event>,
    wake: watch::Sender<u64>,
    registration_errors: RwLock<Vec<String>>,
    /// Bumped after this process wrote a job's final outcome, for local waiters.
    finished: watch::Sender<u64>,
    /// How often a waiter re-reads its job when no notification comes.
    wait_poll: RwLock<std::time::Duration>,
    max_snoozes: RwLock<HashMap<String, u32>>,
    determinism: RwLock<HashMap<String, Determinism>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("storage", &self.inner.storage.name())
            .field("tasks", &self.task_names())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Writers only insert whole values, so a poisoned lock still holds consistent data.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// A queue over `storage`, with no handlers yet.
    pub fn new(storage: DynStorage) -> Self {
        Self::with_storage(InstrumentedStorage::new(storage))
    }

    /// A queue over `storage` whose every storage call is also shown to `layers` (a
    /// profiler, an audit log), after the built-in spans and metrics.
    pub fn with_layers(storage: DynStorage, layers: Vec<Arc<dyn StorageLayer>>) -> Self {
        Self::with_storage(InstrumentedStorage::with_layers(storage, layers))
    }

    fn with_storage(storage: InstrumentedStorage) -> Self {
        let (events, _) = broadcast::channel(DEFAULT_EVENT_CAPACITY);
        let (wake, _) = watch::channel(0);
        let (finished, _) = watch::channel(0);
        let queue = Queue {
            inner: Arc::new(QueueInner {
                storage,
                handlers: RwLock::default(),
                retry_policies: RwLock::default(),
                default_retry: RwLock::default(),
                hooks: RwLock::default(),
                events,
                wake,
                registration_errors: RwLock::default(),
                finished,
                wait_poll: RwLock::new(crate::result::DEFAULT_WAIT_POLL),
                max_snoozes: RwLock::default(),
                determinism: RwLock::default(),
            }),
        };
        queue.register_builtins();
        queue
    }

    /// The storage this queue uses, behind the instrumented handle every call of the
    /// library goes through ([`InstrumentedStorage::inner`] is the backend itself).
    pub fn storage(&self) -> &InstrumentedStorage {
        &self.inner.storage
    }

    fn insert_handler(&self, name: &str, entry: Arc<HandlerEntry>) -> &Self {
        if let Err(e) = validate_task_name(name) {
            write(&self.inner.registration_errors).push(e.to_string());
        }
        write(&self.inner.handlers).insert(name.to_string(), entry);
        self
    }

    /// Registers an async handler that takes the job's context and its arguments.
    /// An invalid name is reported by [`crate::Worker::new`].
    pub fn register<A, R, F, Fut>(&self, name: &str, handler: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        self.insert_handler(name, HandlerEntry::new_async(name, handler))
    }

    /// Registers an async handler that takes only its arguments.
    pub fn register_fn<A, R, F, Fut>(&self, name: &str, handler: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        self.register(name, move |_ctx: JobContext, args: A| handler(args))
    }

    /// Registers a synchronous handler; it runs on tokio's blocking pool, so it may block.
    pub fn register_blocking<A, R, F>(&self, name: &str, handler: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Result<R, TaskError> + Send + Sync + 'static,
    {
        self.insert_handler(name, HandlerEntry::new_blocking(name, handler))
    }

    /// Registers a typed [`Task`] under its `NAME`.
    pub fn register_task<T: Task>(&self) -> &Self {
        self.register(T::NAME, |ctx: JobContext, task: T| task.run(ctx))
    }

    /// Sets the retry policy for one task, replacing the default for it.
    pub fn set_retry_policy(&self, task: &str, policy: RetryPolicy) -> &Self {
        write(&self.inner.retry_policies).insert(task.to_string(), policy);
        self
    }

    /// Sets the retry policy for tasks without their own.
    pub fn set_default_retry_policy(&self, policy: RetryPolicy) -> &Self {
        *write(&self.inner.default_retry) = policy;
        self
    }

    /// The retry policy that applies to `task`.
    pub fn retry_policy(&self, task: &str) -> RetryPolicy {
        read(&self.inner.retry_policies)
            .get(task)
            .copied()
            .unwrap_or_else(|| *read(&self.inner.default_retry))
    }

    /// Sets how many times jobs of `task` may snooze ([`crate::Snooze`]) before a
    /// snooze fails the job instead; [`DEFAULT_MAX_SNOOZES`] when not set.
    pub fn set_max_snoozes(&self, task: &str, limit: u32) -> &Self {
        write(&self.inner.max_snoozes).insert(task.to_string(), limit);
        self
    }

    /// How many times jobs of `task` may snooze.
    pub fn max_snoozes(&self, task: &str) -> u32 {
        read(&self.inner.max_snoozes)
            .get(task)
            .copied()
            .unwrap_or(DEFAULT_MAX_SNOOZES)
    }

    /// Sets what a replay of a job of `task` does when a call's arguments differ from
    /// the ones its checkpoint recorded ([`Determinism::Strict`] when not set).
    pub fn set_determinism(&self, task: &str, mode: Determinism) -> &Self {
        write(&self.inner.determinism).insert(task.to_string(), mode);
        self
    }

    /// What a replay of a job of `task` does when a call's arguments changed.
    pub fn determinism(&self, task: &str) -> Determinism {
        read(&self.inner.determinism)
            .get(task)
            .copied()
            .unwrap_or_default()
    }

    /// Sets how often [`Queue::wait_for`] re-reads a job when no notification arrives
    /// (the fallback for notifications lost with a dropped connection, or a backend
    /// without them); [`crate::result::DEFAULT_WAIT_POLL`] when not set.
    pub fn set_wait_poll_interval(&self, every: std::time::Duration) -> &Self {
        *write(&self.inner.wait_poll) = every;
        self
    }

    pub(crate) fn wait_poll_interval(&self) -> std::time::Duration {
        *read(&self.inner.wait_poll)
    }

    /// The registered task names, sorted.
    pub fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.inner.handlers).keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn handler(&self, name: &str) -> Option<Arc<HandlerEntry>> {
        read(&self.inner.handlers).get(name).cloned()
    }

    pub(crate) fn registration_errors(&self) -> Vec<String> {
        read(&self.inner.registration_errors).clone()
    }

    /// Validates a payload against the registered handler and builds the job.
    pub(crate) fn build_job(
        &self,
        task: &str,
        payload: Value,
        options: &JobOptions,
    ) -> Result<NewJob> {
        let handler = self
            .handler(task)
            .ok_or_else(|| Error::UnknownTask(task.to_string()))?;
        handler
            .check(&payload)
            .map_err(|message| Error::InvalidPayload {
                task: task.to_string(),
                message,
            })?;
        options.build(task, payload)
    }

    /// Enqueues a job for a registered task and returns its id (the existing job's id when
    /// its dedupe key is taken).
    ///
    /// # Errors
    /// [`Error::UnknownTask`] when no handler has that name (use [`Queue::enqueue_raw`] in
    /// a process that only produces jobs), [`Error::InvalidPayload`] when the arguments do
    /// not fit the handler's argument type, option errors from [`JobOptions::build`], and
    /// storage errors.
    pub async fn enqueue<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
        options: JobOptions,
    ) -> Result<JobId> {
        let payload = to_payload(task, args)?;
        let job = self.build_job(task, payload, &options)?;
        Ok(self.enqueue_job(job).await?.id)
    }

    /// Enqueues many jobs of one task in a single storage call; ids come back in order.
    ///
    /// # Errors
    /// As [`Queue::enqueue`]; nothing is inserted when any item is invalid.
    pub async fn enqueue_many<A: Serialize>(
        &self,
        task: &str,
        args: impl IntoIterator<Item = A>,
        options: JobOptions,
    ) -> Result<Vec<JobId>> {
        let jobs = args
            .into_iter()
            .map(|a| {
                let payload = to_payload(task, &a)?;
                self.build_job(task, payload, &options)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self.insert_many(task, jobs).await?;
        Ok(out.into_iter().map(|e| e.id).collect())
    }

    /// Inserts prepared jobs of `task` in one storage call, in one `durable_jobs.enqueue`
    /// span whose trace context every job without one stores (see [`crate::trace`]), and
    /// wakes local workers.
    pub(crate) async fn insert_many(
        &self,
        task: &str,
        mut jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let queue = jobs
            .first()
            .map_or(crate::job::DEFAULT_QUEUE, |j| j.queue.as_str());
        let (span, context) = trace::enqueue_span(task, queue, jobs.len(), None);
        let traceparent = context.to_traceparent();
        for j in jobs.iter_mut().filter(|j| j.trace_context.is_none()) {
            j.trace_context = Some(traceparent.clone());
        }
        let out = self
            .inner
            .storage
            .enqueue_many(jobs)
            .instrument(span)
            .await?;
        self.wake();
        Ok(out)
    }

    /// Enqueues a typed [`Task`].
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub async fn enqueue_task<T: Task>(&self, task: &T, options: JobOptions) -> Result<JobId> {
        self.enqueue(T::NAME, task, options).await
    }

    /// Enqueues a job by task name and JSON payload without checking that a handler exists
    /// here: for processes that only produce jobs for workers elsewhere.
    ///
    /// # Errors
    /// Option errors from [`JobOptions::build`] and storage errors.
    pub async fn enqueue_raw(
        &self,
        task: &str,
        payload: Value,
        options: JobOptions,
    ) -> Result<JobId> {
        let job = options.build(task, payload)?;
        Ok(self.enqueue_job(job).await?.id)
    }

    /// Inserts a prepared job and wakes local workers. The insert runs in a
    /// `durable_jobs.enqueue` span, and a job without a [`NewJob::trace_context`] stores
    /// that span's (see [`crate::trace`]); one that has it keeps it.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn enqueue_job(&self, mut job: NewJob) -> Result<Enqueued> {
        let (span, context) = trace::enqueue_span(&job.task, &job.queue, 1, None);
        if job.trace_context.is_none() {
            job.trace_context = Some(context.to_traceparent());
        }
        let out = self.inner.storage.enqueue(job).instrument(span).await?;
        self.wake();
        Ok(out)
    }

    /// One job by id.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.inner.storage.get_job(id).await
    }

    /// Cancels a job that has not finished; returns false when it already had.
    ///
    /// # Errors
    /// [`Error::JobNotFound`] and storage errors.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        // Read first for the metric's labels: cancelling is an operator's action, rare
        // enough for the extra read.
        let job = self.inner.storage.get_job(id).await?;
        let cancelled = self.inner.storage.cancel(id).await?;
        if cancelled {
            if let Some(job) = job {
                crate::metric::job_cancelled(&job.queue, &job.task);
            }
            self.emit(Event::Cancelled { job_id: id });
            self.bump_finished();
        }
        Ok(cancelled)
    }

    /// Sends a signal to a job: stored durably, and the job is woken if it waits. A
    /// workflow receives it with [`JobContext::wait_for_signal`].
    ///
    /// # Errors
    /// [`Error::JobNotFound`], [`Error::JobFinished`], payload serialization and storage
    /// errors.
    pub async fn signal<P: Serialize + ?Sized>(
        &self,
        job_id: JobId,
        name: &str,
        payload: &P,
    ) -> Result<()> {
        let payload = serde_json::to_value(payload)?;
        self.inner
            .storage
            .send_signal(job_id, name, payload)
            .await?;
        self.wake();
        Ok(())
    }

    /// True when a handler other than the built-in ones is registered.
    pub(crate) fn has_user_handlers(&self) -> bool {
        read(&self.inner.handlers)
            .keys()
            .any(|t| t != crate::bundle::BUNDLE_TASK)
    }

    /// Subscribes to worker events from now on.
    pub fn events(&self) -> EventStream {
        EventStream(self.inner.events.subscribe())
    }

    /// Runs `hook` when an attempt starts.
    pub fn on_job_start(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_hook(|h| &mut h.on_start, Arc::new(hook))
    }

    /// Runs `hook` when a job completes.
    pub fn on_job_complete(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_hook(|h| &mut h.on_complete, Arc::new(hook))
    }

    /// Runs `hook` when a job fails for good.
    pub fn on_job_fail(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_hook(|h| &mut h.on_fail, Arc::new(hook))
    }

    /// Runs `hook` when an attempt fails and the job will retry.
    pub fn on_retry(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_hook(|h| &mut h.on_retry, Arc::new(hook))
    }

    pub(crate) fn add_bundle_hook(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_hook(|h| &mut h.on_bundle_done, Arc::new(hook))
    }

    fn add_hook(&self, list: fn(&mut Hooks) -> &mut Vec<HookFn>, hook: HookFn) -> &Self {
        let mut guard = write(&self.inner.hooks);
        let mut hooks = (**guard).clone();
        list(&mut hooks).push(hook);
        *guard = Arc::new(hooks);
        self
    }

    /// True when a hook or an event subscriber would see events, so the worker can skip
    /// building them otherwise.
    pub(crate) fn observed(&self) -> bool {
        self.inner.events.receiver_count() > 0 || !read(&self.inner.hooks).is_empty()
    }

    /// Publishes an event to hooks and subscribers.
    pub(crate) fn emit(&self, event: Event) {
        let hooks = read(&self.inner.hooks).clone();
        if !hooks.is_empty() {
            hooks.run(&event);
        }
        if self.inner.events.receiver_count() > 0 {
            // No receiver is not an error: events are for whoever listens.
            let _ = self.inner.events.send(event);
        }
    }

    /// Wakes this process's workers.
    pub(crate) fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe_wake(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// Tells this process's waiters that jobs may have finished.
    pub(crate) fn bump_finished(&self) {
        self.inner.finished.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe_finished(&self) -> watch::Receiver<u64> {
        self.inner.finished.subscribe()
    }
}

fn to_payload<A: Serialize + ?Sized>(task: &str, args: &A) -> Result<Value> {
    serde_json::to_value(args).map_err(|e| Error::InvalidPayload {
        task: task.to_string(),
        message: e.to_string(),
    })
}
