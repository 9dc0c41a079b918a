//! Renewing the leases of running handlers.

use super::shared::Shared;
use std::sync::Arc;

/// Renews every running attempt's lease each heartbeat interval. A lease found lost is
/// dropped from the set; its handler's later writes are refused by storage anyway.
pub(crate) async fn run_heartbeats(shared: Arc<Shared>) {
    let every = shared.opts.heartbeat_every();
    let mut stop = shared.stopping.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leases: Vec<_> = shared.leases().values().map(|(l, _)| l.clone()).collect();
        for lease in leases {
            match shared
                .queue
                .storage()
                .heartbeat(&lease, shared.opts.lease_duration)
                .await
            {
                Ok(_) => {}
                Err(crate::Error::LeaseLost { job_id }) => {
                    tracing::warn!(job_id, "lease lost: the job was reclaimed or cancelled");
                    if let Some((_, lost)) = shared.leases().remove(&job_id) {
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
