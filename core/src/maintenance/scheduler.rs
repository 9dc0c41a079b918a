//! The scheduler service: a worker runs scheduler passes on an interval.

use crate::storage::Storage;
use crate::worker::shared::Shared;
use crate::worker::timer::Ticker;
use std::sync::Arc;

/// Runs a scheduler pass every scheduler interval until the worker stops. Any number of
/// workers may run this; each tick is enqueued once.
pub(crate) async fn run_scheduler(shared: Arc<Shared>) {
    let mut stop = shared.stopping.subscribe();
    let mut every = Ticker::new(
        &shared.opts.clock,
        shared.started,
        shared.opts.scheduler_interval,
    );
    loop {
        pass(&shared).await;
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass as of the storage clock's now.
pub(crate) async fn pass(shared: &Shared) {
    let storage = shared.queue.storage();
    let now = match storage.now().await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "scheduler could not read the clock; will retry");
            return;
        }
    };
    match crate::schedule::run_due(&shared.queue, now).await {
        Ok(report) if !report.enqueued.is_empty() => {
            tracing::debug!(jobs = report.enqueued.len(), "scheduler enqueued ticks");
            shared.bump_internal_wake();
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "scheduler pass failed; will retry"),
    }
}
