//! Awaiting a job's outcome: [`Queue::wait_for`] and the typed [`JobHandle`].
//!
//! A waiter wakes on three things, whichever comes first: this process's own writes of
//! final outcomes (a worker or a cancel through the same [`Queue`]), the backend's
//! announcement of finishes ([`crate::Storage::finishes`]: NOTIFY on PostgreSQL, the
//! commit watcher on SQLite), and a poll every [`Queue::set_wait_poll_interval`] for
//! whatever a lost notification missed. Each wake costs one read of the job.

use crate::error::{Error, Result};
use crate::job::{Job, JobId, JobStatus};
use crate::options::JobOptions;
use crate::queue::Queue;
use crate::storage::Storage;
use crate::task::Task;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;
use tokio::sync::watch;

/// How often a waiter re-reads its job when no notification comes. Defaults to 1 second.
pub const DEFAULT_WAIT_POLL: Duration = Duration::from_secs(1);

/// A job whose result has type `T`: what [`Queue::submit`] returns. Cheap to clone.
pub struct JobHandle<T> {
    id: JobId,
    queue: Queue,
    _result: PhantomData<fn() -> T>,
}

impl<T> Clone for JobHandle<T> {
    fn clone(&self) -> Self {
        JobHandle {
            id: self.id,
            queue: self.queue.clone(),
            _result: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("id", &self.id).finish()
    }
}

impl<T: DeserializeOwned> JobHandle<T> {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Waits until the job finishes; see [`Queue::wait_for`].
    ///
    /// # Errors
    /// As [`Queue::wait_for`].
    pub async fn wait(&self, timeout: Duration) -> Result<T> {
        self.queue.wait_for(self.id, timeout).await
    }
}

impl Queue {
    /// Enqueues a typed [`Task`] and returns a handle that waits for its typed result.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), durable_jobs::Error> {
    /// use durable_jobs::{JobContext, JobOptions, Queue, Task, TaskError, Worker, WorkerOptions};
    /// use serde::{Deserialize, Serialize};
    /// use std::{sync::Arc, time::Duration};
    /// #[derive(Serialize, Deserialize)]
    /// struct Add { a: i64, b: i64 }
    /// impl Task for Add {
    ///     const NAME: &'static str = "add";
    ///     type Output = i64;
    ///     async fn run(self, _ctx: JobContext) -> Result<i64, TaskError> { Ok(self.a + self.b) }
    /// }
    /// let queue = Queue::new(Arc::new(durable_jobs_memory::MemoryStorage::new()));
    /// queue.register_task::<Add>();
    /// let sum = queue.submit(&Add { a: 2, b: 3 }, JobOptions::new()).await?;
    /// let worker = Worker::new(queue.clone(), WorkerOptions::new())?;
    /// let shutdown = worker.shutdown_handle();
    /// let running = tokio::spawn(async move { worker.run().await });
    /// assert_eq!(sum.wait(Duration::from_secs(30)).await?, 5);
    /// shutdown.shutdown();
    /// # let _ = running.await; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub async fn submit<T: Task>(
        &self,
        task: &T,
        options: JobOptions,
    ) -> Result<JobHandle<T::Output>> {
        let id = self.enqueue_task(task, options).await?;
        Ok(self.handle(id))
    }

    /// A handle on an existing job whose result has type `T`.
    pub fn handle<T: DeserializeOwned>(&self, id: JobId) -> JobHandle<T> {
        JobHandle {
            id,
            queue: self.clone(),
            _result: PhantomData,
        }
    }

    /// Waits until job `id` finishes and returns its result as `T`. A job that fails an
    /// attempt and will retry is still unfinished: the wait goes on. Waiting changes
    /// nothing about the job, and any number of waiters, in any process, may wait on one
    /// job.
    ///
    /// # Errors
    /// [`Error::JobFailed`] with the last error when the job failed for good,
    /// [`Error::JobCancelled`] when it was cancelled, [`Error::WaitTimeout`] when it had
    /// not finished within `timeout`, [`Error::InvalidResult`] when its result does not
    /// deserialize into `T`, [`Error::JobNotFound`] when no such job exists (or it was
    /// deleted meanwhile), and storage errors.
    pub async fn wait_for<T: DeserializeOwned>(&self, id: JobId, timeout: Duration) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first read, so a finish between the read and the wait
        // still changes a channel.
        let mut local = self.subscribe_finished();
        let mut remote = self.storage().finishes();
        let mut job = self.storage().watch_job(id).await?;
        let poll = self.wait_poll_interval();
        loop {
            let current = job.ok_or(Error::JobNotFound(id))?;
            if current.status.is_finished() {
                return outcome(current);
            }
            tokio::select! {
                _ = changed(&mut local) => {}
                _ = changed_opt(&mut remote) => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::WaitTimeout { job_id: id, timeout });
                }
            }
            job = self.storage().get_job(id).await?;
        }
    }
}

/// Waits for a change; a closed channel never changes again, so it waits forever (the
/// other wake sources still run).
async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn changed_opt(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => changed(rx).await,
        None => std::future::pending::<()>().await,
    }
}

/// A finished job's outcome as the waiter's result.
fn outcome<T: DeserializeOwned>(job: Job) -> Result<T> {
    match job.status {
        JobStatus::Completed => {
            let value = job.result.unwrap_or(serde_json::Value::Null);
            serde_json::from_value(value).map_err(|e| Error::InvalidResult {
                job_id: job.id,
                message: e.to_string(),
            })
        }
        JobStatus::Cancelled => Err(Error::JobCancelled {
            job_id: job.id,
            error: job.last_error,
        }),
        _ => Err(Error::JobFailed {
            job_id: job.id,
            error: job.last_error.unwrap_or_default(),
        }),
    }
}
