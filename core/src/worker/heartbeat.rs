//! Renewing the leases of running and buffered jobs.

use super::registry;
use super::shared::Shared;
use super::timer::plus;
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
        let leases: Vec<_> = shared.leases().values().map(|h| h.lease.clone()).collect();
        for batch in leases.chunks(HEARTBEAT_BATCH) {
            // A renewal lasts the lease from when it was sent, on the worker's clock.
            let sent = shared.opts.clock.now();
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
            let lasts_until = plus(sent, shared.opts.lease_duration);
            let mut lost = Vec::new();
            {
                // One lock for the whole batch: every lost lease leaves the set before any
                // handler hears of it, so a queue loop woken by one loss (a handler that
                // ended) finds every other lost lease of the batch gone too, and starts
                // none of those still buffered.
                let mut held = shared.leases();
                for (lease, result) in batch.iter().zip(results) {
                    match result {
                        Ok(_) => {
                            if let Some(h) = held.get_mut(&lease.job_id).filter(|h| h.is(lease)) {
                                h.lasts_until = h.lasts_until.max(lasts_until);
                            }
                        }
                        Err(crate::Error::LeaseLost { job_id }) => {
                            // A job that finished while this batch was in flight left the
                            // set when its outcome was handed on: its lease ended, none
                            // was lost.
                            if held.get(&job_id).is_some_and(|h| h.is(lease)) {
                                if let Some(h) = held.remove(&job_id) {
                                    lost.push((job_id, h.lost));
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(job_id = lease.job_id, error = %e, "heartbeat failed; will retry")
                        }
                    }
                }
            }
            for (job_id, signal) in lost {
                tracing::warn!(
                    job_id,
                    "heartbeat: lease lost: the job was reclaimed or cancelled"
                );
                // A running handler sees this through `JobContext::cancelled`; a buffered
                // job is dropped unstarted.
                signal.set_lost();
            }
        }
    }
}
