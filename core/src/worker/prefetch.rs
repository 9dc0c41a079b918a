//! The rule for starting a prefetched job: a job waiting in the local queue starts only
//! while this worker still holds its lease with time to spare; otherwise it is dropped
//! without running, so a lease lost while the job waited can never start a second,
//! concurrent run of its handler beside the worker that holds the job now.

use super::complete::{Finish, RunMeta};
use super::options::WorkerOptions;
use super::shared::{HeldLease, LeaseSignal, Shared};
use crate::event::LeaseDropReason;
use crate::storage::ClaimedJob;
use std::time::Duration;
use tokio::sync::mpsc;

/// What to do with a prefetched job whose turn to start has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The lease is ours with time to spare: run the handler.
    Start,
    /// Do not run it, for this reason.
    Drop(LeaseDropReason),
}

/// The least lease time a prefetched job must have left, on the worker's clock, to
/// start: half of what a held lease has left just before a renewal when every renewal
/// lands (the lease minus the heartbeat interval: 10 s of the default 30 s lease).
///
/// A healthy worker thus never holds a job back: the heartbeat renews buffered leases
/// with the running ones, so they always have more than the margin left. The rule trips
/// only once renewals have failed or stalled for half that slack, when the lease may run
/// out (and another worker reclaim the job) before the next renewal could land.
pub(crate) fn start_margin(opts: &WorkerOptions) -> Duration {
    opts.lease_duration.saturating_sub(opts.heartbeat_every()) / 2
}

/// The verdict on a prefetched job, from its entry in the held leases (gone once the
/// heartbeat found the lease lost), its lost signal and the time on the worker's clock
/// (in microseconds since the Unix epoch, see [`super::timer::TimerClock::now_micros`]).
pub(crate) fn verdict(
    held: Option<&HeldLease>,
    lost: &LeaseSignal,
    now_us: i64,
    margin: Duration,
) -> Verdict {
    let Some(held) = held else {
        return Verdict::Drop(LeaseDropReason::Lost);
    };
    if lost.is_lost() {
        return Verdict::Drop(LeaseDropReason::Lost);
    }
    let left_us = held.lasts_until.timestamp_micros().saturating_sub(now_us);
    let margin_us = i64::try_from(margin.as_micros()).unwrap_or(i64::MAX);
    if left_us < margin_us {
        return Verdict::Drop(LeaseDropReason::TooShort);
    }
    Verdict::Start
}

/// The verdict on the prefetched job `c` at `now_us` on the worker's clock.
pub(crate) fn judge(shared: &Shared, c: &ClaimedJob, lost: &LeaseSignal, now_us: i64) -> Verdict {
    let leases = shared.leases();
    let held = leases.get(&c.job.id).filter(|h| h.is(&c.lease));
    verdict(held, lost, now_us, start_margin(&shared.opts))
}

/// Drops a prefetched job the loop will not start: it stops being renewed, and the
/// completer writes what the reason calls for (nothing for a lost lease, a fenced
/// release for one too short) and reports it as [`crate::Event::LeaseDropped`].
pub(crate) fn drop_unstarted(
    shared: &Shared,
    c: &ClaimedJob,
    reason: LeaseDropReason,
    out: &mpsc::UnboundedSender<Finish>,
) {
    {
        let mut leases = shared.leases();
        if leases.get(&c.job.id).is_some_and(|h| h.is(&c.lease)) {
            leases.remove(&c.job.id);
        }
    }
    tracing::warn!(
        job_id = c.job.id,
        ?reason,
        "a prefetched job was dropped unstarted: its lease was lost or too short to start"
    );
    let meta = RunMeta::of(shared, c);
    if out.send(Finish::Dropped { meta, reason }).is_err() {
        tracing::error!("completer gone; dropped job left to lease expiry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Lease;
    use chrono::{DateTime, Utc};

    fn held(lasts_until: DateTime<Utc>) -> (HeldLease, LeaseSignal) {
        let tx = LeaseSignal::new();
        let rx = tx.clone();
        let lease = Lease {
            job_id: 1,
            attempt: 1,
            token: 7,
            expires_at: lasts_until,
        };
        (
            HeldLease {
                lease,
                lost: tx,
                lasts_until,
            },
            rx,
        )
    }

    #[test]
    fn the_margin_is_half_the_slack_over_one_heartbeat() {
        let opts = WorkerOptions::new();
        assert_eq!(start_margin(&opts), Duration::from_secs(10));
        let opts = WorkerOptions::new()
            .lease_duration(Duration::from_secs(60))
            .heartbeat_interval(Duration::from_secs(50));
        assert_eq!(start_margin(&opts), Duration::from_secs(5));
    }

    #[test]
    fn a_job_starts_only_while_its_lease_is_held_with_time_to_spare() {
        let now = Utc::now();
        let margin = Duration::from_secs(10);
        let (h, lost) = held(now + chrono::Duration::seconds(20));
        assert_eq!(
            verdict(Some(&h), &lost, now.timestamp_micros(), margin),
            Verdict::Start
        );
        // Exactly the margin left still starts; a microsecond less does not.
        let (h, lost) = held(now + chrono::Duration::seconds(10));
        assert_eq!(
            verdict(Some(&h), &lost, now.timestamp_micros(), margin),
            Verdict::Start
        );
        let later = now + chrono::Duration::microseconds(1);
        assert_eq!(
            verdict(Some(&h), &lost, later.timestamp_micros(), margin),
            Verdict::Drop(LeaseDropReason::TooShort)
        );
        // Past its end on the worker's clock.
        let (h, lost) = held(now - chrono::Duration::seconds(1));
        assert_eq!(
            verdict(Some(&h), &lost, now.timestamp_micros(), margin),
            Verdict::Drop(LeaseDropReason::TooShort)
        );
    }

    #[test]
    fn a_lost_lease_never_starts_however_much_time_it_had() {
        let now = Utc::now();
        let margin = Duration::from_secs(10);
        let (h, lost) = held(now + chrono::Duration::seconds(30));
        h.lost.set_lost();
        assert_eq!(
            verdict(Some(&h), &lost, now.timestamp_micros(), margin),
            Verdict::Drop(LeaseDropReason::Lost)
        );
        // Gone from the held set: the heartbeat found it lost.
        assert_eq!(
            verdict(None, &lost, now.timestamp_micros(), margin),
            Verdict::Drop(LeaseDropReason::Lost)
        );
    }
}
