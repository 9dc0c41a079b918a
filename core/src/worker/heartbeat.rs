//! Renewing the leases of running and buffered jobs.

use super::registry;
use super::shared::Shared;
use super::timer::Ticker;
use crate::storage::Storage;
use std::sync::Arc;

/// The most leases renewed by one storage call; a worker holding more renews them in
/// several calls, so one statement's arguments stay bounded.
const HEARTBEAT_BATCH: usize = 1000;

/// Renews every held lease (running or buffered) each heartbeat interval, in batches of
/// [`HEARTBEAT_BATCH`] through [`crate::Storage::heartbeat_many`], and the worker's
/// registry entry. A lease found lost is dropped from the set and its handler told; its
/// later writes are refused by storage anyway. Runs until the run's last outcome is
/// written, so leases stay renewed through the shutdown grace, and past it while a
/// blocking handler's thread still runs.
pub(crate) async fn run_heartbeats(shared: Arc<Shared>) {
    let mut every = Ticker::new(
        &shared.opts.clock,
        shared.started,
        shared.opts.heartbeat_every(),
    );
    let mut stop = shared.finished.subscribe();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        registry::renew(&shared).await;
        let leases: Vec<_> = shared.leases().values().map(|(l, _)| l.clone()).collect();
        for batch in leases.chunks(HEARTBEAT_BATCH) {
            let results = match shared
                .queue
                .storage()
                .heartbeat_many(batch, shared.opts.lease_duration)
                .await
            {
                Ok(results) => {
                    shared.health.contact();
                    results
                }
                Err(e) => {
                    shared.health.failure();
                    tracing::warn!(leases = batch.len(), error = %e, "heartbeat failed; will retry");
                    continue;
                }
            };
            if results.len() != batch.len() {
                tracing::warn!(
                    leases = batch.len(),
                    results = results.len(),
                    "storage answered a heartbeat batch with the wrong number of results; \
                     leases without one are renewed next interval"
                );
            }
            for (lease, result) in batch.iter().zip(results) {
                match result {
                    Ok(_) => {}
                    Err(crate::Error::LeaseLost { job_id }) => {
                        // A job that finished while this batch was in flight left the set
                        // when its outcome was handed on: its lease ended, none was lost.
                        let held = shared.leases().remove(&job_id);
                        if let Some((_, lost)) = held {
                            tracing::warn!(
                                job_id,
                                "heartbeat: lease lost: the job was reclaimed or cancelled"
                            );
                            // The handler sees this through `JobContext::cancelled`.
                            lost.send_replace(true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(job_id = lease.job_id, error = %e, "heartbeat failed; will retry")
                    }
                }
            }
        }
    }
}
