//! Runs one seed: enqueues the scenario round by round, runs workers over fault-injecting
//! storage (errors, delays, pauses past the lease, crashes), moves the clock, then lets a
//! fault-free worker finish everything.

use super::rng::Rng;
use super::scenario::{self, Item, Kind, Scenario, Shared, ATTEMPTS, TICK_PERIOD, TICK_TASK};
use crate::testing::fault::{FaultPlan, FaultStorage, PausedCall};
use crate::testing::ConformanceHarness;
use crate::{
    BundleItem, BundleOptions, CatchUp, JobId, JobOptions, Queue, Schedule, Worker, WorkerOptions,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a worker's lease lasts (on the storage clock).
pub(crate) const LEASE: Duration = Duration::from_secs(60);
/// The schedule's name.
pub(crate) const SCHEDULE: &str = "sim.every";
/// A worker's drain is shut down after this long on tokio's clock (a crashed worker's
/// loops never go idle); it is not a failure.
const DRAIN_CAP: Duration = Duration::from_secs(120);
/// Fault-free passes the final phase makes at most.
const FINAL_PASSES: usize = 60;

/// What the driver enqueued and did, for the invariant checks.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Each enqueued item with its id.
    pub(crate) enqueued: Vec<(Item, JobId)>,
    /// Items cancelled while unfinished (cancel returned true).
    pub(crate) cancelled: Vec<JobId>,
    /// Calls paused past their lease.
    pub(crate) pauses: u64,
    /// Workers crashed.
    pub(crate) crashes: u64,
    /// Worker incarnations run.
    pub(crate) workers: u64,
    /// Fault-free passes the final phase needed.
    pub(crate) final_passes: usize,
}

/// Runs one seed on `h`; returns what was done.
pub(crate) async fn run<H: ConformanceHarness>(
    h: &H,
    seed: u64,
    scale: usize,
    shared: &Arc<Shared>,
) -> crate::Result<Record> {
    let mut rng = Rng::new(seed);
    let scenario = Scenario::generate(&mut rng, scale);
    let storage = h.storage();
    let client = Queue::new(storage.clone());
    scenario::register(&client, shared);
    let mut rec = Record::default();
    // The application enqueues through failing storage too: an error after the write
    // committed makes it enqueue again (a dedupe key keeps that to one job).
    let producer_plan = FaultPlan::new(rng.next_u64())
        .error_before(rng.below(80) as u32)?
        .error_after(rng.below(80) as u32)?;
    let producer = Queue::new(Arc::new(
        FaultStorage::new(storage.clone(), producer_plan)
            .with_log(shared.log.clone())
            .with_owner("producer"),
    ));
    scenario::register(&producer, shared);
    if scenario.schedule {
        let every = Schedule::every(TICK_PERIOD)
            .task(TICK_TASK, &serde_json::json!({}))
            .tick_in_payload(true)
            // Every missed tick within two hours: the driver never jumps further, so each
            // tick must run exactly once.
            .catch_up(CatchUp::Backfill { window_secs: 7_200 });
        client.add_schedule(SCHEDULE, every).await?;
    }
    let plan = FaultPlan::new(rng.next_u64())
        .error_before(rng.below(60) as u32)?
        .error_after(rng.below(40) as u32)?
        .delay(rng.below(100) as u32, Duration::from_millis(200))?
        .pause(rng.below(20) as u32)?;
    let (pause_tx, mut pause_rx) = mpsc::unbounded_channel::<PausedCall>();
    for round in 0..scenario.rounds {
        act(&client, &producer, &scenario, round, &mut rec).await?;
        let workers = rng.range(1, 2);
        let mut set = Vec::new();
        for i in 0..workers {
            let mut worker_plan = plan.clone();
            if rng.chance(250) {
                worker_plan = worker_plan.crash_after(rng.range(3, 150));
            }
            let name = format!("sim-{round}-{i}");
            let faulty = FaultStorage::new(storage.clone(), worker_plan)
                .with_log(shared.log.clone())
                .with_owner(name.clone())
                .with_pauses(pause_tx.clone());
            let worker = worker(&faulty, shared, &name, rng.range(1, 4) as usize, &scenario)?;
            set.push((faulty, Arc::new(worker)));
        }
        rec.workers += workers;
        drain_all(h, &set, &mut pause_rx, &mut rec).await;
        h.advance(Duration::from_secs(rng.below(240))).await;
    }
    finish(h, &client, &scenario, shared, &mut rec).await?;
    Ok(rec)
}

/// The driver's actions of one round: enqueue, signal, cancel.
async fn act(
    client: &Queue,
    producer: &Queue,
    scenario: &Scenario,
    round: usize,
    rec: &mut Record,
) -> crate::Result<()> {
    for (n, item) in scenario.items.iter().enumerate() {
        if item.round == round {
            let id = enqueue_retrying(producer, n, item).await?;
            rec.enqueued.push((item.clone(), id));
        }
    }
    send_signals(client, rec, |item| item.signal_round == round).await?;
    let cancels: Vec<JobId> = rec
        .enqueued
        .iter()
        .filter(|(item, _)| item.cancel_round == Some(round))
        .map(|(_, id)| *id)
        .collect();
    for id in cancels {
        if client.cancel(id).await? {
            rec.cancelled.push(id);
        }
    }
    Ok(())
}

/// Enqueues an item as an application would through a flaky connection: again on a
/// transient error.
async fn enqueue_retrying(producer: &Queue, n: usize, item: &Item) -> crate::Result<JobId> {
    let mut tries = 0;
    loop {
        match enqueue(producer, n, item).await {
            Err(e) if e.is_transient() && tries < 50 => tries += 1,
            other => return other,
        }
    }
}

async fn enqueue(client: &Queue, n: usize, item: &Item) -> crate::Result<JobId> {
    let opts = || {
        JobOptions::new()
            .retries(ATTEMPTS)
            .dedupe_key(format!("item-{n}"))
    };
    match &item.kind {
        Kind::Plain(p) => {
            client
                .enqueue_raw("sim.plain", serde_json::to_value(p)?, opts())
                .await
        }
        Kind::Doomed => {
            client
                .enqueue_raw("sim.doomed", serde_json::Value::Null, opts())
                .await
        }
        Kind::Flow(ops) => {
            client
                .enqueue_raw("sim.flow", serde_json::to_value(ops)?, opts())
                .await
        }
        Kind::Bundle(members) => {
            let items = members
                .iter()
                .map(|p| BundleItem::new("sim.plain", p, JobOptions::new().retries(ATTEMPTS)))
                .collect();
            client.enqueue_bundle(items, BundleOptions::new()).await
        }
    }
}

/// Sends the signals of enqueued items that `when` picks and that were not sent yet.
async fn send_signals(
    client: &Queue,
    rec: &mut Record,
    when: impl Fn(&Item) -> bool,
) -> crate::Result<()> {
    for (item, id) in rec.enqueued.iter_mut() {
        if item.signalled || !when(item) {
            continue;
        }
        for name in item.signals() {
            match client.signal(*id, &name, &7i64).await {
                // A cancelled workflow refuses its signals.
                Ok(()) | Err(crate::Error::JobFinished { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Sent once: the final phase sends only what is left.
        item.signalled = true;
    }
    Ok(())
}

fn worker(
    faulty: &FaultStorage,
    shared: &Arc<Shared>,
    name: &str,
    concurrency: usize,
    scenario: &Scenario,
) -> crate::Result<Worker> {
    let queue = Queue::new(Arc::new(faulty.clone()));
    scenario::register(&queue, shared);
    Worker::new(
        queue,
        WorkerOptions::new()
            .queue("default", concurrency)
            .name(name)
            .lease_duration(LEASE)
            .shutdown_grace(Duration::from_secs(1))
            .metrics_interval(Duration::ZERO)
            .scheduler(scenario.schedule),
    )
}

/// Drains every worker at once, resuming paused calls after moving the clock past their
/// lease and shutting down crashed workers.
async fn drain_all<H: ConformanceHarness>(
    h: &H,
    workers: &[(FaultStorage, Arc<Worker>)],
    pauses: &mut mpsc::UnboundedReceiver<PausedCall>,
    rec: &mut Record,
) {
    let mut set = tokio::task::JoinSet::new();
    for (_, w) in workers {
        let w = w.clone();
        set.spawn(async move {
            // A drain's own errors (an injected storage error it gave up on) are faults
            // the run expects; the invariants judge the outcome.
            let _ = w.drain().await;
        });
    }
    let started = tokio::time::Instant::now();
    let mut crashed = vec![false; workers.len()];
    loop {
        tokio::select! {
            done = set.join_next() => {
                match done {
                    None => break,
                    Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Some(_) => {}
                }
            }
            Some(paused) = pauses.recv() => {
                rec.pauses += 1;
                // The worker is stopped mid-write: its lease runs out, another sweep
                // reclaims the job, then the write arrives late and must be refused.
                h.advance(LEASE + Duration::from_secs(1)).await;
                let _ = h.storage().release_stale_locks().await;
                paused.resume();
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let capped = started.elapsed() > DRAIN_CAP;
                for (i, (faulty, w)) in workers.iter().enumerate() {
                    if (faulty.is_crashed() || capped) && !crashed[i] {
                        crashed[i] = true;
                        rec.crashes += u64::from(faulty.is_crashed());
                        w.shutdown_handle().shutdown();
                    }
                }
            }
        }
    }
}

/// The final phase: the schedule stops, every signal is sent, and fault-free workers run
/// with the clock moving past every lease, sleep and backoff until all jobs finished.
async fn finish<H: ConformanceHarness>(
    h: &H,
    client: &Queue,
    scenario: &Scenario,
    shared: &Arc<Shared>,
    rec: &mut Record,
) -> crate::Result<()> {
    if scenario.schedule {
        client.remove_schedule(SCHEDULE).await?;
    }
    send_signals(client, rec, |_| true).await?;
    let storage = h.storage();
    let (pause_tx, mut pause_rx) = mpsc::unbounded_channel();
    for pass in 0..FINAL_PASSES {
        let faulty = FaultStorage::new(storage.clone(), FaultPlan::new(0))
            .with_log(shared.log.clone())
            .with_owner(format!("sim-final-{pass}"))
            .with_pauses(pause_tx.clone());
        let w = worker(&faulty, shared, &format!("sim-final-{pass}"), 4, scenario)?;
        drain_all(h, &[(faulty, Arc::new(w))], &mut pause_rx, rec).await;
        rec.final_passes = pass + 1;
        let unfinished = storage
            .list_jobs(crate::JobFilter {
                statuses: vec![
                    crate::JobStatus::Pending,
                    crate::JobStatus::Retrying,
                    crate::JobStatus::Running,
                    crate::JobStatus::Waiting,
                ],
                limit: Some(1),
                ..Default::default()
            })
            .await?;
        if unfinished.is_empty() {
            break;
        }
        h.advance(Duration::from_secs(300)).await;
    }
    Ok(())
}
