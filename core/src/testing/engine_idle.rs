//! Engine conformance for when a worker calls its queue idle: a claim that found nothing
//! says so only about the moment its snapshot was taken, so a handler that ended while
//! the claim was out may have enqueued work the claim could not see.

use super::fault::{FaultPlan, FaultStorage, HeldClaim};
use super::support::{expect_event, Runs, PATIENCE};
use super::ConformanceHarness;
use crate::{
    Event, JobContext, JobOptions, ManualClock, NewJob, Queue, TaskError, Worker, WorkerOptions,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// A drain must not end on a claim that came back empty if a handler ended while that
/// claim was out: the handler may have enqueued a job (through a connection of its own,
/// whose notification has not arrived) after the claim's snapshot.
///
/// Placed exactly: `first` runs, wakes the worker's claim loop and waits; the claim that
/// wake sends is answered (empty) and held; `first` then enqueues `second` straight into
/// the backend (no wake-up reaches the worker: the wrapper hides the backend's) and
/// ends; only once its completion is reported does the held answer reach the worker.
/// The drain must still run `second`.
pub async fn a_drain_outlasts_an_empty_claim_that_a_handler_outran<H: ConformanceHarness>(h: &H) {
    let backend = h.storage();
    let (holds_tx, mut holds) = mpsc::unbounded_channel::<HeldClaim>();
    let faulty = FaultStorage::new(backend.clone(), FaultPlan::new(0))
        .with_claim_holds(holds_tx)
        .without_wakeups();
    let q = Queue::new(Arc::new(faulty));
    let runs = Runs::default();
    let first_running = Arc::new(AtomicBool::new(false));
    let (go_tx, go) = watch::channel(false);
    {
        let (q2, running, backend) = (q.clone(), first_running.clone(), backend.clone());
        q.register("first", move |_ctx: JobContext, _: ()| {
            let (q2, running, backend, mut go) =
                (q2.clone(), running.clone(), backend.clone(), go.clone());
            async move {
                running.store(true, Ordering::SeqCst);
                q2.wake();
                let _ = go.wait_for(|g| *g).await;
                backend
                    .enqueue(NewJob::new("second", serde_json::json!(null)))
                    .await
                    .map_err(|e| TaskError::no_retry(format!("enqueue second: {e}")))?;
                Ok::<_, TaskError>(())
            }
        });
    }
    let r = runs.clone();
    q.register("second", move |_ctx: JobContext, _: serde_json::Value| {
        let r = r.clone();
        async move {
            r.hit("second");
            Ok::<_, TaskError>(())
        }
    });
    let first = q
        .enqueue("first", &(), JobOptions::new())
        .await
        .expect("enqueue first");
    let mut events = q.events();
    // One claim in flight and timers on a clock that stands still: the only claims are
    // the first one (which leases `first`), the one `first`'s wake sends, and those after
    // the held one is let through.
    let clock = ManualClock::new();
    let worker = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 2)
            .claims_in_flight(1)
            .clock(clock.clone()),
    )
    .expect("worker options");
    // Lets every claim through at once but the first empty one answered while `first`
    // runs, which goes to the test.
    let (captured_tx, captured) = oneshot::channel::<HeldClaim>();
    let passer = {
        let running = first_running.clone();
        tokio::spawn(async move {
            let mut captured_tx = Some(captured_tx);
            while let Some(held) = holds.recv().await {
                if held.claimed == 0 && running.load(Ordering::SeqCst) {
                    if let Some(tx) = captured_tx.take() {
                        if let Err(held) = tx.send(held) {
                            held.resume();
                        }
                        continue;
                    }
                }
                held.resume();
            }
        })
    };
    let drain = tokio::spawn(async move { worker.drain().await });
    let held = tokio::time::timeout(PATIENCE, captured)
        .await
        .expect("no empty claim while `first` ran")
        .expect("claim passer gone");
    go_tx.send(true).expect("first is waiting");
    expect_event(
        &mut events,
        "first's completion",
        |e| matches!(e, Event::Completed { job_id, .. } if *job_id == first),
    )
    .await;
    held.resume();
    let report = tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("the drain did not end")
        .expect("drain task")
        .expect("drain");
    passer.abort();
    assert_eq!(
        runs.get("second"),
        1,
        "the drain ended on the held empty claim, before the job `first` enqueued ran \
         (report: {report:?})"
    );
}
