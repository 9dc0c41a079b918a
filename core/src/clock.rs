//! Clocks for backends without a database clock: the system clock, and a manual clock
//! that tests move forward instead of sleeping.

use chrono::{DateTime, Utc};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What [`Clock::sleep_until`] returns: resolves once that clock reads the deadline.
pub type ClockSleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once this clock reads `deadline` or later. A worker's timers (poll
    /// interval, heartbeats, lease sweeps, scheduler passes) wait on it, so a worker
    /// given a [`ManualClock`] (see [`crate::WorkerOptions::clock`]) follows virtual time.
    /// The default waits on tokio's timer for the time left until `deadline`: real time.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> ClockSleep {
        let left = (deadline - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

type Listener = Box<dyn Fn() + Send + Sync>;

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualInner>>,
    /// Wakes [`Clock::sleep_until`]ers after every change of time.
    changed: Arc<Notify>,
}

struct ManualInner {
    now: DateTime<Utc>,
    listeners: Vec<Listener>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A manual clock starting at the current wall-clock time, cut to a whole
    /// microsecond: the precision SQL backends store, so a time read from the clock and
    /// written back compares equal.
    pub fn new() -> Self {
        let now = Utc::now();
        let micros = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Self::starting_at(micros)
    }

    /// A manual clock starting at `now`.
    pub fn starting_at(now: DateTime<Utc>) -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new(ManualInner {
                now,
                listeners: Vec::new(),
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Moves time forward by `by`, then tells listeners (so idle workers look again).
    pub fn advance(&self, by: Duration) {
        let delta = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut inner = self.lock();
        inner.now += delta;
        for l in &inner.listeners {
            l();
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Sets the time (forward or back), then tells listeners.
    pub fn set(&self, now: DateTime<Utc>) {
        let mut inner = self.lock();
        inner.now = now;
        for l in &inner.listeners {
            l();
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Calls `f` after every change of time.
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        self.lock().listeners.push(Box::new(f));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualInner> {
        // A poisoned clock only means a listener panicked; the time itself is intact.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.lock().now
    }

    /// Resolves once the clock has been moved to `deadline` or later; real time plays
    /// no part.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> ClockSleep {
        let clock = self.clone();
        Box::pin(async move {
            loop {
                // Registered before the time is read, so a move in between is not missed.
                let changed = clock.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if clock.now() >= deadline {
                    return;
                }
                changed.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    fn ready(sleep: &mut ClockSleep) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        sleep.as_mut().poll(&mut cx) == Poll::Ready(())
    }

    #[test]
    fn manual_sleep_ends_when_the_clock_reaches_its_deadline() {
        let clock = ManualClock::new();
        let deadline = clock.now() + chrono::Duration::hours(1);
        let mut sleep = clock.sleep_until(deadline);
        assert!(!ready(&mut sleep));
        clock.advance(Duration::from_secs(3599));
        assert!(!ready(&mut sleep), "a second early");
        clock.advance(Duration::from_secs(1));
        assert!(ready(&mut sleep));
        // A deadline already passed ends at once.
        assert!(ready(&mut clock.sleep_until(deadline)));
    }
}
