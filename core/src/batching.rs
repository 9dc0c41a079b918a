//! The batching loop the worker's completions and the checkpoint group commit share:
//! whatever arrived while every writer was busy goes out together, so batching adds no
//! waiting (a lone item is written at once).

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// Takes items from `rx` in batches of up to `batch` and hands each batch to `write` in
/// a task of its own, with at most `writers` (at least one) in flight; returns once every
/// sender is gone and every write has ended. Each item is in exactly one batch.
pub(crate) async fn run_batches<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    writers: usize,
    batch: usize,
    write: F,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(writers.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        // Take a writer first, so items accumulate into a batch while all are busy.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        // A write that just ended woke its callers and then freed this slot, and tokio
        // runs the task woken last first: without a yield the loop would take the first
        // caller's next item alone and leave the rest for the write after, so callers
        // that write in step (a job's checkpoints) split into two batches and each
        // waits out two writes. A yield is no timer: items arrive from tasks already
        // woken, and a lone item still goes at once.
        tokio::task::yield_now().await;
        let mut buf = Vec::with_capacity(batch);
        if rx.recv_many(&mut buf, batch).await == 0 {
            break;
        }
        let written = write(buf);
        tasks.spawn(async move {
            written.await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
