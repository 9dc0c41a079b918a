//! The threads a blocking handler started, counted per attempt, so that the worker holds
//! the attempt's lease (and keeps renewing it) until every one of them has returned: a
//! thread cannot be stopped, so an attempt dropped at its timeout or at shutdown must not
//! let a second attempt of the same job start beside it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The live blocking threads of one attempt. Clones share the count.
///
/// Kept in the claimed job's [`AttemptState`], beside its lease-lost signal: every
/// attempt needs both and most never start a thread, so together they cost one
/// allocation per job.
#[derive(Clone, Default)]
pub(crate) struct AttemptThreads(Arc<AttemptState>);

/// What a claimed job's worker side and its handler share, in one allocation: whether
/// its lease was lost (see [`super::shared::LeaseSignal`]) and its blocking threads.
#[derive(Default)]
pub(crate) struct AttemptState {
    /// True once the lease was lost.
    pub(crate) lost: AtomicBool,
    /// Notified when `lost` is set.
    pub(crate) lost_changed: Notify,
    running: AtomicUsize,
    /// Notified when the count of running threads drops to zero.
    returned: Notify,
}

/// Held by a blocking thread while it runs; dropping it (the thread returned or
/// panicked) counts the thread out.
pub(crate) struct ThreadToken(AttemptThreads);

impl AttemptThreads {
    /// The threads counted in `state`, shared with the job's lease-lost signal.
    pub(crate) fn sharing(state: Arc<AttemptState>) -> Self {
        AttemptThreads(state)
    }

    /// Counts in a thread about to start.
    pub(crate) fn start(&self) -> ThreadToken {
        self.0.running.fetch_add(1, Ordering::SeqCst);
        ThreadToken(self.clone())
    }

    /// How many are running.
    pub(crate) fn running(&self) -> usize {
        self.0.running.load(Ordering::SeqCst)
    }

    /// Resolves once none is running.
    pub(crate) async fn all_returned(&self) {
        loop {
            // Registered before the count is read, so a drop to zero in between is not
            // missed.
            let returned = self.0.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            returned.await;
        }
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        // A token exists only while its thread is counted in, so the count is positive.
        if self.0 .0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .0.returned.notify_waiters();
        }
    }
}
