//! Hooks: callbacks a queue runs as jobs start, complete, fail or retry.

use crate::event::Event;
use std::sync::Arc;

/// A hook callback. It runs on the worker's task, so it should be quick; hand slow work
/// to a channel.
pub type HookFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// The registered hooks, by kind.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) on_start: Vec<HookFn>,
    pub(crate) on_complete: Vec<HookFn>,
    pub(crate) on_fail: Vec<HookFn>,
    pub(crate) on_retry: Vec<HookFn>,
    pub(crate) on_bundle_done: Vec<HookFn>,
}

impl Hooks {
    /// Runs the hooks that match the event's kind. A panicking hook is caught and logged:
    /// a hook must never take a worker down.
    pub(crate) fn run(&self, event: &Event) {
        let list = match event {
            Event::Started { .. } => &self.on_start,
            Event::Completed { .. } => &self.on_complete,
            Event::Failed { .. } => &self.on_fail,
            Event::Retrying { .. } => &self.on_retry,
            Event::BundleFinished { .. } => &self.on_bundle_done,
            _ => return,
        };
        for hook in list {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event))) {
                tracing::error!(
                    job_id = ?event.job_id(),
                    panic = %crate::task::panic_message(p),
                    "a hook panicked"
                );
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.on_start.is_empty()
            && self.on_complete.is_empty()
            && self.on_fail.is_empty()
            && self.on_retry.is_empty()
            && self.on_bundle_done.is_empty()
    }
}
