//! The clock a worker's timers follow, and repeating timers anchored on it.

use crate::clock::{Clock, ClockSleep};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// The clock a worker's timers wait on: `None` for tokio's timer (real time). Options
/// compare equal when both use real time or share one clock.
#[derive(Clone, Default)]
pub(crate) struct TimerClock(Option<Arc<dyn Clock>>);

impl TimerClock {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        TimerClock(Some(clock))
    }

    /// Now on this clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Some(clock) => clock.now(),
            None => Utc::now(),
        }
    }

    /// Now on this clock, in microseconds since the Unix epoch. On real time this reads
    /// the system clock without going through chrono's calendar dates, which cost more
    /// than the read itself: the worker loop takes one such reading per job it starts.
    pub(crate) fn now_micros(&self) -> i64 {
        match &self.0 {
            Some(clock) => clock.now().timestamp_micros(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        }
    }

    /// Microseconds on a scale that never steps back: on real time, since the first such
    /// reading in this process on the monotonic clock (a wall clock set back or forward
    /// does not move it); on an injected clock, its time since the epoch. For measuring
    /// how long something took and waiting a multiple of it.
    pub(crate) fn monotonic_micros(&self) -> i64 {
        static ANCHOR: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        match &self.0 {
            Some(clock) => clock.now().timestamp_micros(),
            None => {
                let anchor = *ANCHOR.get_or_init(std::time::Instant::now);
                i64::try_from(anchor.elapsed().as_micros()).unwrap_or(i64::MAX)
            }
        }
    }

    /// Resolves once `duration` has passed on this clock.
    pub(crate) fn sleep(&self, duration: Duration) -> ClockSleep {
        match &self.0 {
            Some(clock) => clock.sleep_until(plus(clock.now(), duration)),
            None => Box::pin(tokio::time::sleep(duration)),
        }
    }
}

impl PartialEq for TimerClock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for TimerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TimerClock(injected)"
        } else {
            "TimerClock(tokio)"
        })
    }
}

/// The shortest period a [`Ticker`] runs at.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// A repeating timer. On an injected clock its n-th tick is due `n * every` after an
/// anchor, the run's start: a clock moved just after the worker started fires it, however
/// late its task got going or however long the work between ticks took; after a jump
/// over several ticks it fires once, then counts on from then. On real time it is tokio's
/// monotonic interval, its first tick `every` from now, a late tick delaying the rest.
pub(crate) enum Ticker {
    /// Tokio's timer.
    Real(tokio::time::Interval),
    /// An injected clock.
    Clock {
        clock: Arc<dyn Clock>,
        every: Duration,
        next: DateTime<Utc>,
    },
}

impl Ticker {
    pub(crate) fn new(clock: &TimerClock, anchor: DateTime<Utc>, every: Duration) -> Self {
        // Tokio's interval refuses a zero period, and on a clock one would spin; a lease
        // of under 3 ns makes a zero heartbeat interval.
        let every = every.max(MIN_PERIOD);
        match &clock.0 {
            Some(clock) => Ticker::Clock {
                clock: clock.clone(),
                every,
                next: plus(anchor, every),
            },
            None => {
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Ticker::Real(interval)
            }
        }
    }

    /// Resolves at the next tick.
    pub(crate) async fn tick(&mut self) {
        match self {
            Ticker::Real(interval) => {
                interval.tick().await;
            }
            Ticker::Clock { clock, every, next } => {
                clock.sleep_until(*next).await;
                let now = clock.now();
                *next = plus(*next, *every);
                if *next <= now {
                    *next = plus(now, *every);
                }
            }
        }
    }
}

/// `t` plus `d`, saturating at the latest time.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Polls one tick once: true when it was due.
    fn ticks(t: &mut Ticker) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tick = t.tick();
        let mut tick = std::pin::pin!(tick);
        tick.as_mut().poll(&mut cx) == Poll::Ready(())
    }

    #[test]
    fn monotonic_readings_follow_an_injected_clock_and_never_step_back_on_real_time() {
        let clock = ManualClock::new();
        let timer = TimerClock::new(Arc::new(clock.clone()));
        let before = timer.monotonic_micros();
        assert_eq!(before, clock.now().timestamp_micros());
        clock.advance(Duration::from_secs(3));
        assert_eq!(timer.monotonic_micros() - before, 3_000_000);
        let real = TimerClock::default();
        let mut last = real.monotonic_micros();
        assert!(last >= 0);
        for _ in 0..1000 {
            let now = real.monotonic_micros();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }

    #[test]
    fn clock_ticks_count_from_the_anchor_and_skip_after_a_jump() {
        let clock = ManualClock::new();
        let start = clock.now();
        let timer = TimerClock::new(Arc::new(clock.clone()));
        let mut t = Ticker::new(&timer, start, Duration::from_secs(10));
        assert!(!ticks(&mut t));
        clock.advance(Duration::from_secs(10));
        assert!(ticks(&mut t), "due 10 s after the anchor");
        assert!(!ticks(&mut t), "the next is 20 s after it");
        // A jump over several ticks fires one, then counts on from the jump.
        clock.advance(Duration::from_secs(35));
        assert!(ticks(&mut t));
        assert!(!ticks(&mut t));
        clock.advance(Duration::from_secs(9));
        assert!(!ticks(&mut t));
        clock.advance(Duration::from_secs(1));
        assert!(ticks(&mut t));
    }
}
