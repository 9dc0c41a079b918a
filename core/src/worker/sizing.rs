//! Sizing a queue loop's local queue (the jobs it claims ahead of free slots) from what it
//! measures, so the worker is fast with default options: short jobs get a local queue deep
//! enough to keep every slot busy while the next claim is in flight, slow jobs get none
//! (they stay in storage for other workers), and no job waits in the local queue for a
//! good share of its lease. [`crate::WorkerOptions::prefetch`] replaces the sizing with a
//! fixed depth.

use std::time::Duration;

/// The deepest local queue the sizing picks: graphile-worker's local queue in its own
/// performance test, and the depth that gave the best hand-tuned PostgreSQL drains.
pub const DEFAULT_MAX_PREFETCH: usize = 1000;

/// How many claim round trips of work the local queue holds. A claim is sent once half a
/// batch is free and up to [`super::options::DEFAULT_CLAIMS_IN_FLIGHT`] claims overlap,
/// so one round trip's worth leaves slots idle whenever a claim comes back late; four
/// covers the overlap and the variance of round trips under load.
const ROUND_TRIPS_AHEAD: f64 = 4.0;

/// The share of the lease a job may wait in the local queue before it starts: a tenth,
/// so a prefetched job starts long before its lease needs its first renewal.
const LEASE_SHARE: f64 = 0.1;

/// Weight of the newest sample in the moving averages: recent enough to follow a change
/// of load within a few dozen samples, smooth enough that one outlier moves little.
const SMOOTHING: f64 = 0.2;

/// Shortest handler duration the sizing believes: handlers that finish in place take a
/// few microseconds, and dividing by less would only overflow into the cap anyway.
const MIN_HANDLER_SECS: f64 = 1e-6;

/// What a queue loop has measured so far (moving averages, in seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Measured {
    /// How long a handler runs, from its start until its outcome is known.
    pub(crate) handler_secs: Option<f64>,
    /// How long a claim takes, from sending it until its jobs are back.
    pub(crate) claim_secs: Option<f64>,
}

/// The local queue depth for `measured`: the jobs (rounded) the loop's `concurrency` slots start
/// during [`ROUND_TRIPS_AHEAD`] claim round trips, no more than they start within
/// [`LEASE_SHARE`] of the lease, and at most `max`. Zero until both a handler and a claim
/// have been measured.
pub(crate) fn local_queue_target(
    measured: Measured,
    concurrency: usize,
    lease: Duration,
    max: usize,
) -> usize {
    let (Some(handler), Some(claim)) = (measured.handler_secs, measured.claim_secs) else {
        return 0;
    };
    // Jobs per second the slots start when every slot is kept busy.
    let rate = concurrency as f64 / handler.max(MIN_HANDLER_SECS);
    let ahead = rate * claim * ROUND_TRIPS_AHEAD;
    let within_lease = rate * lease.as_secs_f64() * LEASE_SHARE;
    // `as` saturates (and maps NaN to 0), so any measurement gives a depth in range.
    (ahead.min(within_lease).round() as usize).min(max)
}

/// One queue loop's sizing: its measurements and, when the user fixed the depth, that.
#[derive(Debug, Clone)]
pub(crate) struct Sizer {
    measured: Measured,
    fixed: Option<usize>,
    concurrency: usize,
    lease: Duration,
}

impl Sizer {
    /// Sizing for a loop with `concurrency` slots and leases of `lease`; `fixed` is the
    /// user's [`crate::WorkerOptions::prefetch`], which wins over measurements.
    pub(crate) fn new(fixed: Option<usize>, concurrency: usize, lease: Duration) -> Self {
        Sizer {
            measured: Measured::default(),
            fixed,
            concurrency,
            lease,
        }
    }

    /// Notes how long a handler ran.
    pub(crate) fn handler_ran(&mut self, took: Duration) {
        average(&mut self.measured.handler_secs, took);
    }

    /// Notes how long a claim took.
    pub(crate) fn claim_took(&mut self, took: Duration) {
        average(&mut self.measured.claim_secs, took);
    }

    /// The local queue depth to keep now.
    pub(crate) fn local_queue(&self) -> usize {
        self.fixed.unwrap_or_else(|| {
            local_queue_target(
                self.measured,
                self.concurrency,
                self.lease,
                DEFAULT_MAX_PREFETCH,
            )
        })
    }
}

fn average(avg: &mut Option<f64>, sample: Duration) {
    let x = sample.as_secs_f64();
    *avg = Some(match *avg {
        Some(a) => a + SMOOTHING * (x - a),
        None => x,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn m(handler: f64, claim: f64) -> Measured {
        Measured {
            handler_secs: Some(handler),
            claim_secs: Some(claim),
        }
    }

    #[test]
    fn nothing_measured_means_no_local_queue() {
        assert_eq!(local_queue_target(Measured::default(), 10, LEASE, 1000), 0);
        let half = Measured {
            handler_secs: Some(0.001),
            claim_secs: None,
        };
        assert_eq!(local_queue_target(half, 10, LEASE, 1000), 0);
    }

    #[test]
    fn quick_handlers_fill_the_local_queue_up_to_the_cap() {
        // No-op handlers finishing in place (5 µs) with 2 ms claims: 10 slots start
        // 2M jobs/s, far more than the cap.
        assert_eq!(local_queue_target(m(5e-6, 0.002), 10, LEASE, 1000), 1000);
        assert_eq!(local_queue_target(m(5e-6, 0.002), 500, LEASE, 1000), 1000);
        // Even a handler measured at zero stays finite.
        assert_eq!(local_queue_target(m(0.0, 0.002), 10, LEASE, 1000), 1000);
    }

    #[test]
    fn depth_covers_four_claim_round_trips_of_work() {
        // 10 ms handlers on 10 slots: 1,000 jobs/s; 2 ms claims: 4 x 2 jobs.
        assert_eq!(local_queue_target(m(0.010, 0.002), 10, LEASE, 1000), 8);
        // Twice the slots, twice the depth.
        assert_eq!(local_queue_target(m(0.010, 0.002), 20, LEASE, 1000), 16);
        // Slower claims, deeper queue.
        assert_eq!(local_queue_target(m(0.010, 0.010), 10, LEASE, 1000), 40);
    }

    #[test]
    fn slow_handlers_get_no_local_queue() {
        // One-second handlers: a claim round trip is a sliver of one job's run.
        assert_eq!(local_queue_target(m(1.0, 0.001), 10, LEASE, 1000), 0);
        assert_eq!(local_queue_target(m(1.0, 0.001), 500, LEASE, 1000), 2);
    }

    #[test]
    fn jobs_never_wait_more_than_a_tenth_of_the_lease() {
        // 100 ms handlers on 10 slots (100 jobs/s) with 5 s claims would want 2,000
        // jobs; a tenth of a 30 s lease at 100 jobs/s is 300.
        assert_eq!(local_queue_target(m(0.1, 5.0), 10, LEASE, 1000), 300);
        // A short lease shrinks it further.
        assert_eq!(
            local_queue_target(m(0.1, 5.0), 10, Duration::from_secs(3), 1000),
            30
        );
    }

    #[test]
    fn the_user_s_prefetch_wins_over_measurements() {
        let mut fixed = Sizer::new(Some(7), 10, LEASE);
        fixed.handler_ran(Duration::from_micros(5));
        fixed.claim_took(Duration::from_millis(2));
        assert_eq!(fixed.local_queue(), 7);
        let mut off = Sizer::new(Some(0), 10, LEASE);
        off.handler_ran(Duration::from_micros(5));
        off.claim_took(Duration::from_millis(2));
        assert_eq!(off.local_queue(), 0);
    }

    #[test]
    fn the_sizer_follows_its_moving_averages() {
        let mut s = Sizer::new(None, 10, LEASE);
        assert_eq!(s.local_queue(), 0);
        s.handler_ran(Duration::from_millis(10));
        s.claim_took(Duration::from_millis(2));
        assert_eq!(s.local_queue(), 8);
        // Handlers turn slow: the depth follows them down.
        for _ in 0..50 {
            s.handler_ran(Duration::from_secs(1));
        }
        assert_eq!(s.local_queue(), 0);
    }
}
