//! Returning jobs whose worker died: expired leases go back to be claimed.

use crate::worker::shared::Shared;
use std::sync::Arc;

/// Sweeps expired leases every sweep interval until the worker stops. Recovery is keyed
/// on lease expiry, never on worker names, so any live worker recovers any dead one's jobs.
pub(crate) async fn run_sweeper(shared: Arc<Shared>) {
    let mut stop = shared.stopping.subscribe();
    loop {
        sweep_once(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(shared.opts.sweep_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One sweep; wakes the queue loops when jobs came back.
pub(crate) async fn sweep_once(shared: &Shared) {
    match shared.queue.storage().reclaim_expired().await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(jobs = n, "reclaimed jobs with expired leases");
            shared.bump_internal_wake();
        }
        Err(e) => tracing::warn!(error = %e, "lease sweep failed; will retry"),
    }
}
