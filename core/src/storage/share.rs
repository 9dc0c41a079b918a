//! How a storage shares the one thing all its writes go through (SQLite's writer
//! connection, the memory store's lock, PostgreSQL's server) with background work such
//! as the retention purge: foreground writes (claims, completions, enqueues) come first,
//! and background work gets a bounded share of that time while foreground writes wait
//! (on PostgreSQL, where nothing waits for a purge batch, while foreground statements
//! run).
//!
//! After a background piece of work that took `t` at share `s`, the next may not run
//! before `t * (1 - s) / s` has passed while foreground work goes on. The share grows
//! with how long background work has been running without a break, from
//! [`BASE_SHARE`] to [`MAX_SHARE`] over [`RAMP`]: a burst of foreground work (a drain of
//! a few seconds) keeps about 90% of the writer, while a purge that has had to run for
//! a long time (a queue whose sustained rate leaves no idle time) gets half of it. On a
//! 2-core VM running SQLite at a steady 50k jobs/s with completed jobs kept 1 s, the
//! kept jobs levelled at about 265k (5 s of jobs), where a fixed 10% share let them grow
//! by about 40k a second. Past what the writer can do for both, jobs come first: at 65k
//! jobs/s the purge fell behind while the drain kept up, where a writer taking the purge
//! in turn with everything else let pending jobs pile up instead.
//!
//! Storage implementations use it; applications never need to.

use std::time::{Duration, Instant};

/// The share of the writer's time background commands get, while foreground writes
/// wait, when background work has just started: 10%.
pub const BASE_SHARE: f64 = 0.1;

/// The share background commands reach after running [`RAMP`] without a break: 50%.
pub const MAX_SHARE: f64 = 0.5;

/// How long background work runs without a break before it gets [`MAX_SHARE`]: 10 s.
pub const RAMP: Duration = Duration::from_secs(10);

/// A background command arriving this long after the last one finished starts a new
/// run (the share starts again from [`BASE_SHARE`]): 100 ms, far longer than a caller
/// takes to send its next step, far shorter than the retention interval.
pub const BREAK: Duration = Duration::from_millis(100);

/// How the share ramps: from `base` to `max` over `ramp`.
#[derive(Debug, Clone, Copy)]
pub struct ShareRamp {
    /// The share when background work starts (clamped to 0.001..=1).
    pub base: f64,
    /// The share after `ramp` without a break (at least `base`).
    pub max: f64,
    /// How long the share takes to grow from `base` to `max`.
    pub ramp: Duration,
}

impl Default for ShareRamp {
    fn default() -> Self {
        ShareRamp {
            base: BASE_SHARE,
            max: MAX_SHARE,
            ramp: RAMP,
        }
    }
}

/// When the next background command may run ahead of waiting foreground writes.
#[derive(Debug, Clone)]
pub struct BackgroundShare {
    ramp: ShareRamp,
    /// When the current run of background work started.
    run_started: Option<Instant>,
    /// When the last background command finished.
    last_done: Option<Instant>,
    /// Background may not run before this while foreground writes wait.
    next_at: Option<Instant>,
}

/// A share clamped to 0.001..=1 (1 lets background run whenever it is next).
fn clamp_share(s: f64) -> f64 {
    if s.is_finite() {
        s.clamp(0.001, 1.0)
    } else {
        1.0
    }
}

impl BackgroundShare {
    /// A policy whose share ramps as `ramp` says.
    pub fn new(ramp: ShareRamp) -> Self {
        let base = clamp_share(ramp.base);
        let ramp = ShareRamp {
            base,
            max: clamp_share(ramp.max).max(base),
            ramp: ramp.ramp,
        };
        BackgroundShare {
            ramp,
            run_started: None,
            last_done: None,
            next_at: None,
        }
    }

    /// Notes a background command queued at `now`: it continues the current run, or
    /// starts a new one after a break.
    pub fn arrived(&mut self, now: Instant) {
        let broke = match (self.run_started, self.last_done) {
            (None, _) => true,
            (Some(_), Some(done)) => now.saturating_duration_since(done) > BREAK,
            // The run's first command has not finished yet.
            (Some(_), None) => false,
        };
        if broke {
            self.run_started = Some(now);
        }
    }

    /// The share background gets at `now`.
    pub fn share(&self, now: Instant) -> f64 {
        let ran = self
            .run_started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let ramped = if self.ramp.ramp.is_zero() {
            1.0
        } else {
            (ran.as_secs_f64() / self.ramp.ramp.as_secs_f64()).min(1.0)
        };
        self.ramp.base + (self.ramp.max - self.ramp.base) * ramped
    }

    /// True when a background command may run at `now` though foreground writes wait.
    pub fn due(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|at| now >= at)
    }

    /// How long until [`BackgroundShare::due`] turns true (zero when it is).
    pub fn wait(&self, now: Instant) -> Duration {
        self.next_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// Records a background command that ran from `start` to `end`.
    pub fn ran(&mut self, start: Instant, end: Instant) {
        let took = end.saturating_duration_since(start);
        let s = self.share(end);
        // A pause computed from a huge duration could overflow `Duration`; such a
        // command has earned a long pause anyway.
        let owed = Duration::try_from_secs_f64(took.as_secs_f64() * (1.0 - s) / s)
            .unwrap_or(Duration::from_secs(3600));
        self.next_at = end.checked_add(owed).or(Some(end));
        self.last_done = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fixed(share: f64) -> BackgroundShare {
        BackgroundShare::new(ShareRamp {
            base: share,
            max: share,
            ramp: RAMP,
        })
    }

    #[test]
    fn background_is_due_until_it_has_run() {
        let p = BackgroundShare::new(ShareRamp::default());
        let now = Instant::now();
        assert!(p.due(now));
        assert_eq!(p.wait(now), Duration::ZERO);
    }

    #[test]
    fn a_background_command_owes_nine_times_its_time_at_a_tenth() {
        let mut p = fixed(0.1);
        let start = Instant::now();
        p.arrived(start);
        let end = start + 10 * MS;
        p.ran(start, end);
        assert!(!p.due(end));
        assert!(!p.due(end + 89 * MS));
        assert_eq!(p.wait(end), 90 * MS);
        assert!(p.due(end + 90 * MS));
        assert_eq!(p.wait(end + 95 * MS), Duration::ZERO);
    }

    #[test]
    fn each_run_sets_the_pause_afresh() {
        let mut p = fixed(0.5);
        let t0 = Instant::now();
        p.arrived(t0);
        p.ran(t0, t0 + 40 * MS);
        let t1 = t0 + 100 * MS;
        p.arrived(t1);
        p.ran(t1, t1 + 2 * MS);
        assert_eq!(p.wait(t1 + 2 * MS), 2 * MS);
    }

    /// Runs 1 ms steps 10 ms apart from `t` until `until`.
    fn step_until(p: &mut BackgroundShare, t: &mut Instant, until: Instant) {
        while *t < until {
            p.ran(*t, *t + MS);
            *t += 10 * MS;
            p.arrived(*t);
        }
    }

    #[test]
    fn the_share_ramps_while_background_runs_without_a_break() {
        let mut p = BackgroundShare::new(ShareRamp {
            base: 0.1,
            max: 0.5,
            ramp: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        p.arrived(t0);
        assert!((p.share(t0) - 0.1).abs() < 1e-9);
        // Steps 10 ms apart (each waiting out its pause) keep the run going.
        let mut t = t0;
        step_until(&mut p, &mut t, t0 + Duration::from_secs(5));
        assert!((p.share(t0 + Duration::from_secs(5)) - 0.3).abs() < 1e-9);
        step_until(&mut p, &mut t, t0 + Duration::from_secs(12));
        assert!((p.share(t) - 0.5).abs() < 1e-9);
        // At half the writer, a step owes as long as it took.
        p.ran(t, t + MS);
        assert_eq!(p.wait(t + MS), MS);
        let end = t + MS;
        // After a break the next run starts from the base share again.
        let later = end + BREAK + MS;
        p.arrived(later);
        assert!((p.share(later) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_full_share_never_pauses_and_bad_shares_are_clamped() {
        let t = Instant::now();
        let mut full = fixed(1.0);
        full.arrived(t);
        full.ran(t, t + 50 * MS);
        assert!(full.due(t + 50 * MS));
        let mut nan = fixed(f64::NAN);
        nan.arrived(t);
        nan.ran(t, t + 50 * MS);
        assert!(nan.due(t + 50 * MS));
        let mut zero = fixed(0.0);
        zero.arrived(t);
        zero.ran(t, t + MS);
        assert_eq!(zero.wait(t + MS), 999 * MS);
    }
}
