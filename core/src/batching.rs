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
