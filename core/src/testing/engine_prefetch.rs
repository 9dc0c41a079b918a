//! Engine conformance for the local queue (prefetch): a buffered job starts only while
//! its worker still holds its lease with time to spare, so a lease lost while the job
//! waited never starts a second run of its handler, and buffered jobs start in claim
//! order across claims.

use super::fault::{FaultPlan, FaultStorage, PausedCall};
use super::support::{expect_event, job, queue, until_status, worker, Runs};
use super::ConformanceHarness;
use crate::{
    Event, JobContext, JobId, JobOptions, JobStatus, LeaseDropReason, ManualClock, Queue,
    TaskError, Worker, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The lease the workers under test take, and their heartbeat interval: the start
/// margin is then (30 s - 10 s) / 2 = 10 s.
const LEASE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Jobs waiting in the local queue behind the one running.
const BUFFERED: i32 = 5;

/// Registers `count` (counts its runs by argument) and `hold` (its first attempt holds
/// the worker's one slot until `gate` opens or its lease is lost; a rerun ends at once).
fn register(q: &Queue, runs: &Runs, gate: &watch::Receiver<bool>) {
    let r = runs.clone();
    q.register("count", move |_ctx: JobContext, n: i32| {
        let r = r.clone();
        async move {
            r.hit(&n.to_string());
            Ok::<_, TaskError>(n)
        }
    });
    let gate = gate.clone();
    q.register("hold", move |ctx: JobContext, _: ()| {
        let mut gate = gate.clone();
        async move {
            if ctx.attempt() == 1 {
                tokio::select! {
                    _ = gate.wait_for(|open| *open) => {}
                    _ = ctx.cancelled() => {}
                }
            }
            Ok::<_, TaskError>(())
        }
    });
}

/// Enqueues `hold` first in claim order, then the `count` jobs.
async fn enqueue(q: &Queue) -> (JobId, Vec<JobId>) {
    let hold = q
        .enqueue("hold", &(), JobOptions::new().priority(10))
        .await
        .expect("enqueue hold");
    let mut counts = Vec::new();
    for n in 0..BUFFERED {
        counts.push(
            q.enqueue("count", &n, JobOptions::new())
                .await
                .expect("enqueue count"),
        );
    }
    (hold, counts)
}

/// A worker with one slot, a local queue of `depth` jobs, and its timers on `clock`.
fn buffering_worker(q: &Queue, clock: &ManualClock, depth: usize) -> Worker {
    Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 1)
            .prefetch(depth)
            .lease_duration(LEASE)
            .heartbeat_interval(HEARTBEAT)
            .shutdown_grace(super::support::PATIENCE)
            .clock(clock.clone()),
    )
    .expect("worker options")
}

/// Waits for `n` [`Event::LeaseDropped`] events with `reason`. For lost leases, a `count`
/// job starting on this worker fails the case at once: another worker ran it. (A job
/// released for a short lease may rightly start again on a fresh lease, even before its
/// drop is reported, since the report follows the release's write.)
async fn expect_dropped(events: &mut crate::EventStream, n: usize, reason: LeaseDropReason) {
    let mut dropped = 0;
    while dropped < n {
        let e = expect_event(events, "a buffered job's drop", |e| match e {
            Event::LeaseDropped { .. } => true,
            Event::Started { task, .. } => reason == LeaseDropReason::Lost && task == "count",
            _ => false,
        })
        .await;
        match e {
            Event::LeaseDropped {
                job_id, reason: r, ..
            } => {
                assert_eq!(r, reason, "job {job_id} dropped for the wrong reason");
                dropped += 1;
            }
            other => panic!("a buffered job started instead of being dropped: {other:?}"),
        }
    }
}

/// A worker holds buffered jobs whose leases expire (its renewals stop: its clock stands
/// still) and a second worker reclaims and runs them. When the first worker's heartbeat
/// then finds the leases lost, it drops its buffered jobs without starting them: every
/// handler ran exactly once, and every job completed.
pub async fn a_buffered_job_whose_lease_was_lost_never_starts<H: ConformanceHarness>(h: &H) {
    let runs = Runs::default();
    let (_open, gate) = watch::channel(false);
    // Two queues on one storage, one per worker, with the same handlers: each has its
    // own event stream.
    let (qa, qb) = (queue(h), queue(h));
    register(&qa, &runs, &gate);
    register(&qb, &runs, &gate);
    let (hold, counts) = enqueue(&qa).await;
    let mut events = qa.events();
    let clock = ManualClock::new();
    let a = buffering_worker(&qa, &clock, BUFFERED as usize);
    let stop = a.shutdown_handle();
    let run = tokio::spawn(async move { a.run().await });
    // `hold` came in the same claim as every `count` job: all are leased to A now, the
    // count jobs waiting in its local queue behind `hold`.
    expect_event(
        &mut events,
        "hold's start",
        |e| matches!(e, Event::Started { job_id, .. } if *job_id == hold),
    )
    .await;
    // A's clock stands still, so it renews nothing while storage time passes its leases.
    h.advance(LEASE + Duration::from_secs(1)).await;
    let b = worker(&qb, 4).drain().await.expect("second worker's drain");
    assert_eq!(
        b.completed,
        1 + BUFFERED as u64,
        "B ran every reclaimed job"
    );
    // A's next heartbeat finds every lease lost: `hold` is cancelled, which frees the
    // slot, and the buffered jobs must be dropped, not started.
    clock.advance(HEARTBEAT);
    expect_dropped(&mut events, BUFFERED as usize, LeaseDropReason::Lost).await;
    stop.shutdown();
    let report = run.await.expect("join").expect("A's run");
    assert_eq!(report.completed, 0, "A completed nothing it had lost");
    assert_eq!(
        report.lost,
        1 + BUFFERED as u64,
        "hold's refused outcome and each dropped job"
    );
    for (n, &id) in counts.iter().enumerate() {
        assert_eq!(runs.get(&n.to_string()), 1, "job {id}'s handler runs");
        let j = job(&qa, id).await;
        assert_eq!((j.status, j.attempt), (JobStatus::Completed, 2), "job {id}");
    }
    assert_eq!(job(&qa, hold).await.status, JobStatus::Completed);
}

/// A buffered job whose lease has less than the start margin left on the worker's clock
/// (its renewals stalled) is released unspent instead of started, and runs once later on
/// a fresh lease.
pub async fn a_buffered_job_whose_lease_ran_short_is_released_not_started<H: ConformanceHarness>(
    h: &H,
) {
    let runs = Runs::default();
    let (open, gate) = watch::channel(false);
    // Every lease-fenced write stops until the test resumes it: holding the first
    // heartbeat stalls the worker's renewals.
    let (pauses, mut paused) = mpsc::unbounded_channel::<PausedCall>();
    let plan = FaultPlan::new(1).pause(1000).expect("fault plan");
    let faulty = FaultStorage::new(h.storage(), plan).with_pauses(pauses);
    let q = Queue::new(Arc::new(faulty));
    q.set_default_retry_policy(crate::RetryPolicy::exponential(
        Duration::ZERO,
        Duration::ZERO,
    ));
    register(&q, &runs, &gate);
    let (hold, counts) = enqueue(&q).await;
    let mut events = q.events();
    let clock = ManualClock::new();
    let w = buffering_worker(&q, &clock, BUFFERED as usize);
    let stop = w.shutdown_handle();
    let run = tokio::spawn(async move { w.run().await });
    expect_event(
        &mut events,
        "hold's start",
        |e| matches!(e, Event::Started { job_id, .. } if *job_id == hold),
    )
    .await;
    // The first heartbeat goes out and stalls: no lease is renewed from here on.
    clock.advance(HEARTBEAT);
    let stalled = loop {
        let call = tokio::time::timeout(super::support::PATIENCE, paused.recv())
            .await
            .expect("a heartbeat within the patience")
            .expect("pause channel open");
        if call.call == "heartbeat_many" {
            break call;
        }
        call.resume();
    };
    // 21 s after the claim, 9 s of each lease are left on the worker's clock: less than
    // the 10 s margin. Storage time stands still, so the leases are still the worker's.
    clock.advance(Duration::from_secs(11));
    let resumer = tokio::spawn(async move {
        while let Some(call) = paused.recv().await {
            call.resume();
        }
    });
    open.send_replace(true);
    expect_dropped(&mut events, BUFFERED as usize, LeaseDropReason::TooShort).await;
    // Released unspent, they are claimed again on fresh leases and run once each.
    for (n, &id) in counts.iter().enumerate() {
        super::support::until_status(&q, id, JobStatus::Completed).await;
        assert_eq!(runs.get(&n.to_string()), 1, "job {id}'s handler runs");
        assert_eq!(
            job(&q, id).await.attempt,
            1,
            "job {id}: the release spent none"
        );
    }
    assert_eq!(job(&q, hold).await.status, JobStatus::Completed);
    stalled.resume();
    stop.shutdown();
    let report = run.await.expect("join").expect("run");
    resumer.abort();
    assert_eq!(
        (report.completed, report.released, report.lost),
        (1 + BUFFERED as u64, BUFFERED as u64, 0)
    );
}

/// A job claimed while the local queue holds jobs that rank after it starts before them:
/// the local queue keeps claim order across claims, not only within one.
pub async fn a_better_job_claimed_later_starts_before_the_buffered_ones<H: ConformanceHarness>(
    h: &H,
) {
    let runs = Runs::default();
    let (open, gate) = watch::channel(false);
    let q = queue(h);
    register(&q, &runs, &gate);
    let (hold, counts) = enqueue(&q).await;
    let mut events = q.events();
    let clock = ManualClock::new();
    // Room for more than the first claim finds, so a second claim goes out on the next
    // wake-up while `hold` runs.
    let w = Arc::new(buffering_worker(&q, &clock, 2 * BUFFERED as usize));
    let stop = w.shutdown_handle();
    let runner = w.clone();
    let run = tokio::spawn(async move { runner.run().await });
    expect_event(
        &mut events,
        "hold's start",
        |e| matches!(e, Event::Started { job_id, .. } if *job_id == hold),
    )
    .await;
    // The first claim took every job: the count jobs wait in the local queue.
    for &id in &counts {
        until_status(&q, id, JobStatus::Running).await;
    }
    let urgent = q
        .enqueue("count", &99, JobOptions::new().priority(5))
        .await
        .expect("enqueue the urgent job");
    // Claimed in storage is not yet in the local queue: wait until the worker holds
    // it too (its jobs in flight count the buffered ones) before `hold` ends.
    let holding = counts.len() + 2;
    super::support::poll_until(|| {
        let health = w.health();
        async move {
            if health.jobs_in_flight >= holding {
                Ok(())
            } else {
                Err(format!("the worker never held the urgent job: {health:?}"))
            }
        }
    })
    .await;
    open.send(true).expect("gate open");
    let mut started = Vec::new();
    while started.len() < counts.len() + 1 {
        let e = expect_event(
            &mut events,
            "a count job's start",
            |e| matches!(e, Event::Started { task, .. } if task == "count"),
        )
        .await;
        if let Event::Started { job_id, .. } = e {
            started.push(job_id);
        }
    }
    let mut want = vec![urgent];
    want.extend(&counts);
    assert_eq!(started, want, "the urgent job first, then the rest by age");
    stop.shutdown();
    let report = run.await.expect("join").expect("worker run");
    assert_eq!(report.completed, 2 + BUFFERED as u64);
}
