//! Sampling the jobs-per-queue-and-status gauges: one counts query per interval, never
//! one per job.

use crate::storage::Storage;
use crate::worker::shared::Shared;
use crate::worker::timer::Ticker;
use std::sync::Arc;

/// Samples the gauges every metrics interval until the worker stops.
pub(crate) async fn run_sampler(shared: Arc<Shared>) {
    let mut stop = shared.stopping.subscribe();
    let mut seen = Vec::new();
    let mut every = Ticker::new(
        &shared.opts.clock,
        shared.started,
        shared.opts.metrics_interval,
    );
    loop {
        match shared.queue.storage().counts().await {
            Ok(counts) => crate::metric::sample_counts(&counts, &mut seen),
            Err(e) => tracing::debug!(error = %e, "could not sample job counts; will retry"),
        }
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
