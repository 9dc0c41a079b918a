//! The worker's entry in the storage's worker registry: recorded when a run starts,
//! renewed with the lease heartbeat, removed on a graceful stop.

use super::shared::Shared;
use crate::storage::{Storage, WorkerQueue, WorkerRecord};

/// This run's registry record.
fn record(shared: &Shared) -> WorkerRecord {
    let now = chrono::Utc::now();
    WorkerRecord {
        name: shared.name.clone(),
        host: host_name(),
        pid: std::process::id(),
        queues: shared
            .opts
            .queues
            .iter()
            .map(|q| WorkerQueue {
                name: q.name.clone(),
                concurrency: q.concurrency,
            })
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: now,
        last_seen: now,
        lease_ms: i64::try_from(shared.opts.lease_duration.as_millis()).unwrap_or(i64::MAX),
    }
}

/// The machine's host name: `HOSTNAME`, else `/etc/hostname`, else `unknown`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Records the worker. A failure is logged, not fatal: the heartbeat registers again.
pub(crate) async fn register(shared: &Shared) {
    match shared.queue.storage().register_worker(record(shared)).await {
        Ok(()) => shared.health.contact(),
        Err(e) => {
            shared.health.failure();
            tracing::warn!(error = %e, "could not register the worker; will retry with the heartbeat");
        }
    }
}

/// Renews the worker's record; registers it again if a sweep removed it (the worker was
/// cut off for longer than the registry keeps dead workers).
pub(crate) async fn renew(shared: &Shared) {
    match shared.queue.storage().touch_worker(&shared.name).await {
        Ok(true) => shared.health.contact(),
        Ok(false) => register(shared).await,
        Err(e) => {
            shared.health.failure();
            tracing::warn!(error = %e, "could not renew the worker's registry entry; will retry");
        }
    }
}

/// Removes the worker's record on a graceful stop.
pub(crate) async fn deregister(shared: &Shared) {
    if let Err(e) = shared.queue.storage().deregister_worker(&shared.name).await {
        tracing::warn!(error = %e, "could not remove the worker's registry entry; it will show as dead");
    }
}
