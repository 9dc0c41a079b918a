//! The threads a blocking handler started, counted per attempt, so that the worker holds
//! the attempt's lease (and keeps renewing it) until every one of them has returned: a
//! thread cannot be stopped, so an attempt dropped at its timeout or at shutdown must not
//! let a second attempt of the same job start beside it.

use std::sync::Arc;
use tokio::sync::watch;

/// The live blocking threads of one attempt. Clones share the count.
#[derive(Clone)]
pub(crate) struct AttemptThreads(Arc<watch::Sender<usize>>);

/// Held by a blocking thread while it runs; dropping it (the thread returned or
/// panicked) counts the thread out.
pub(crate) struct ThreadToken(AttemptThreads);

impl AttemptThreads {
    /// No thread running.
    pub(crate) fn new() -> Self {
        AttemptThreads(Arc::new(watch::channel(0).0))
    }

    /// Counts in a thread about to start.
    pub(crate) fn start(&self) -> ThreadToken {
        self.0.send_modify(|n| *n += 1);
        ThreadToken(self.clone())
    }

    /// How many are running.
    pub(crate) fn running(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves once none is running.
    pub(crate) async fn all_returned(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
