//! LISTEN/NOTIFY wake-ups.
//!
//! Every statement that inserts jobs fires one `pg_notify('durable_jobs:<schema>', '')`
//! (a statement trigger), as do releases and lease reclaims. A background task holds one
//! dedicated connection that LISTENs on that channel and bumps a `watch` counter for each
//! notification, so idle workers in every process wake at once.
//!
//! An awaited job's final write notifies on the same channel with the payload
//! `finished:<id>` (see `010_results_progress.sql`); those bump a second counter, the
//! one `Queue::wait_for` watches, and do not wake workers.
//!
//! Notifications sent while the connection is down are lost, so after every (re)connect
//! the task bumps both counters once more: workers then poll, and see whatever was
//! enqueued meanwhile. Polling in the engine stays the fallback for anything else.

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `application_name` of the listener's connection, visible in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "durable_jobs_listener";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Aborts the listener task when the storage (its last clone) is dropped.
#[derive(Debug)]
pub(crate) struct ListenerTask(tokio::task::JoinHandle<()>);

impl ListenerTask {
    /// True once the task ended (its runtime shut down); the storage then starts another.
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn bump(wake: &watch::Sender<u64>) {
    wake.send_modify(|n| *n = n.wrapping_add(1));
}

/// The payload prefix of a finished job's notification.
const FINISHED_PREFIX: &str = "finished:";

/// The counters the listener bumps: `wake` for work (enqueues, releases, reclaims),
/// `finished` for awaited jobs' final writes.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub(crate) wake: Arc<watch::Sender<u64>>,
    pub(crate) finished: Arc<watch::Sender<u64>>,
}

impl Counters {
    /// After a (re)connect or a lost connection: anything may have been missed.
    fn bump_all(&self) {
        bump(&self.wake);
        bump(&self.finished);
    }

    fn on_notification(&self, payload: &str) {
        if payload.starts_with(FINISHED_PREFIX) {
            bump(&self.finished);
        } else {
            bump(&self.wake);
        }
    }
}

/// Starts the listener on the current tokio runtime; `None` outside a runtime.
pub(crate) fn spawn(
    options: &PgConnectOptions,
    channel: String,
    counters: Counters,
) -> Option<ListenerTask> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let options = options.clone().application_name(LISTENER_APPLICATION_NAME);
    Some(ListenerTask(handle.spawn(run(options, channel, counters))))
}

async fn run(options: PgConnectOptions, channel: String, counters: Counters) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match listen(&options, &channel).await {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                // Anything enqueued while we were not listening sent its NOTIFY to no one.
                counters.bump_all();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => counters.on_notification(n.payload()),
                        // The connection dropped and PgListener reconnected (and LISTENed
                        // again) before returning: wake workers for what was missed.
                        Ok(None) => counters.bump_all(),
                        Err(e) => {
                            tracing::warn!(error = %e, channel, "durable-jobs listener lost its connection; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, channel, retry_in = ?backoff, "durable-jobs listener could not LISTEN; workers fall back to polling");
            }
        }
        // Workers poll meanwhile; a wake-up makes them look now rather than at the next
        // poll tick.
        counters.bump_all();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A fresh listener on its own single-connection pool (so it never takes a connection
/// from the storage's pool), listening on `channel`.
async fn listen(options: &PgConnectOptions, channel: &str) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
