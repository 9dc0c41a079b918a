//! Returning jobs whose worker died: expired leases go back to be claimed.

use crate::event::Event;
use crate::job::JobStatus;
use crate::storage::Storage;
use crate::worker::shared::Shared;
use crate::worker::timer::Ticker;
use std::sync::Arc;

/// Sweeps expired leases every sweep interval until the worker stops. Recovery is keyed
/// on lease expiry, never on worker names, so any live worker recovers any dead one's jobs.
pub(crate) async fn run_sweeper(shared: Arc<Shared>) {
    let mut stop = shared.stopping.subscribe();
    let mut every = Ticker::new(
        &shared.opts.clock,
        shared.started,
        shared.opts.sweep_interval,
    );
    loop {
        sweep_once(&shared).await;
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One sweep; wakes the queue loops when jobs came back. Also removes the registry
/// entries of workers dead for longer than the worker retention.
pub(crate) async fn sweep_once(shared: &Shared) {
    prune_dead_workers(shared).await;
    match shared.queue.storage().release_stale_locks().await {
        Ok(swept) if swept.touched() == 0 => {}
        Ok(swept) => {
            if !swept.released.is_empty() {
                tracing::info!(
                    jobs = swept.released.len(),
                    "reclaimed jobs with expired leases"
                );
            }
            for job in swept.released {
                let failed = job.status == JobStatus::Failed;
                crate::metric::job_reclaimed(&job.queue, &job.task, failed);
                shared.queue.emit(Event::LeaseReclaimed {
                    job_id: job.job_id,
                    task: job.task,
                    attempt: job.attempt,
                    failed,
                });
            }
            shared.bump_internal_wake();
        }
        Err(e) => tracing::warn!(error = %e, "lease sweep failed; will retry"),
    }
}

async fn prune_dead_workers(shared: &Shared) {
    let storage = shared.queue.storage();
    let Ok(now) = storage.now().await else {
        return;
    };
    let keep =
        chrono::Duration::from_std(shared.opts.worker_retention + shared.opts.lease_duration)
            .unwrap_or(chrono::Duration::MAX);
    match storage.prune_workers(now - keep).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(workers = n, "removed dead workers from the registry"),
        Err(e) => tracing::debug!(error = %e, "could not prune dead workers; will retry"),
    }
}
