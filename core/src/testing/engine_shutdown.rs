//! Engine conformance for stopping: graceful shutdown releases unfinished and buffered
//! jobs unspent, handlers see the stop as cancellation, and a handler whose lease is lost
//! is cancelled and then dropped.

use super::support::{expect_event, plain_queue, status, BlockingProbe, PATIENCE, WATCH_WINDOW};
use super::ConformanceHarness;
use crate::storage::{DequeueParams, Storage};
use crate::{Event, JobContext, JobOptions, JobStatus, TaskError, Worker, WorkerOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Shutdown returns jobs whose handlers outlive the grace period, without spending an
/// attempt.
pub async fn shutdown_returns_unfinished_jobs_without_spending_an_attempt<H: ConformanceHarness>(
    h: &H,
) {
    let queue = plain_queue(h);
    queue.register_fn("stuck", |_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, TaskError>(())
    });
    let mut events = queue.events();
    let ids = queue
        .enqueue_many("stuck", [(), ()], JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", 2)
            .shutdown_grace(Duration::from_millis(50)),
    )
    .expect("options");
    let stop = w.shutdown_handle();
    let run = tokio::spawn(async move { w.run().await });
    for _ in 0..2 {
        events
            .wait_for(|e| matches!(e, Event::Started { .. }))
            .await
            .expect("started");
    }
    stop.shutdown();
    let report = run.await.expect("join").expect("run");
    assert_eq!(report.released, 2);
    for id in ids {
        let job = queue.get_job(id).await.expect("get").expect("exists");
        assert_eq!((job.status, job.attempt), (JobStatus::Pending, 0));
        assert!(job.lease.is_none());
    }
}

/// A handler sees the shutdown as cancellation and can still finish within the grace
/// period.
pub async fn a_handler_sees_cancellation_and_can_finish_within_the_grace_period<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let queue = plain_queue(h);
    queue.register("polite", |ctx: JobContext, _: ()| async move {
        ctx.cancelled().await;
        assert!(ctx.is_cancelled());
        Ok::<_, TaskError>("wrapped up")
    });
    let mut events = queue.events();
    let id = queue
        .enqueue("polite", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().shutdown_grace(Duration::from_secs(60)),
    )
    .expect("options");
    let report = w
        .run_until(async {
            events
                .wait_for(|e| matches!(e, Event::Started { .. }))
                .await;
        })
        .await
        .expect("run");
    assert_eq!(report.completed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(serde_json::json!("wrapped up")));
}

/// Prefetched jobs run; those still buffered at shutdown are released unspent.
pub async fn prefetched_jobs_run_and_are_released_unspent_at_shutdown<H: ConformanceHarness>(
    h: &H,
) {
    let queue = plain_queue(h);
    queue.register_fn("quick", |n: u32| async move { Ok::<_, TaskError>(n) });
    queue
        .enqueue_many("quick", 0..50u32, JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("default", 2).prefetch(20),
    )
    .expect("options");
    assert_eq!(w.drain().await.expect("drain").completed, 50);

    queue.register_fn("stuck", |_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, TaskError>(())
    });
    let mut events = queue.events();
    let ids = queue
        .enqueue_many("stuck", std::iter::repeat_n((), 8), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", 1)
            .prefetch(5)
            .shutdown_grace(Duration::from_millis(20)),
    )
    .expect("options");
    let report = w
        .run_until(async {
            events
                .wait_for(|e| matches!(e, Event::Started { .. }))
                .await;
        })
        .await
        .expect("run");
    // One running and five prefetched were claimed; all six come back unspent.
    assert_eq!(report.released, 6);
    for id in ids {
        let job = queue.get_job(id).await.expect("get").expect("exists");
        assert_eq!((job.status, job.attempt), (JobStatus::Pending, 0));
    }
}

/// Sends on its channel when dropped: proof that a handler's future was dropped.
struct OnDrop(Option<oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A handler whose lease is lost (here: its job is cancelled while it runs) sees
/// `cancelled()` fire while the worker runs on, and one that ignores it is dropped after
/// the grace period; neither outcome is written.
pub async fn a_lost_lease_cancels_the_handler_and_drops_it_after_the_grace<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let queue = plain_queue(h);
    let (saw_tx, saw_rx) = oneshot::channel::<()>();
    let saw = Arc::new(Mutex::new(Some(saw_tx)));
    queue.register("polite", move |ctx: JobContext, _: ()| {
        let saw = saw.clone();
        async move {
            ctx.cancelled().await;
            if let Some(tx) = saw.lock().expect("lock").take() {
                let _ = tx.send(());
            }
            Ok::<_, TaskError>("wrapped up")
        }
    });
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let guard = Arc::new(Mutex::new(Some(OnDrop(Some(dropped_tx)))));
    queue.register("stubborn", move |_ctx: JobContext, _: ()| {
        let guard = guard.lock().expect("lock").take();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, TaskError>("never")
        }
    });
    let mut events = queue.events();
    let polite = queue
        .enqueue("polite", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let stubborn = queue
        .enqueue("stubborn", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", 2)
            .heartbeat_interval(Duration::from_millis(20))
            .shutdown_grace(Duration::from_millis(200)),
    )
    .expect("options");
    let report = w
        .run_until(async {
            for _ in 0..2 {
                expect_event(&mut events, "a start", |e| {
                    matches!(e, Event::Started { .. })
                })
                .await;
            }
            assert!(queue.cancel(polite).await.expect("cancel"));
            assert!(queue.cancel(stubborn).await.expect("cancel"));
            tokio::time::timeout(PATIENCE, saw_rx)
                .await
                .expect("the polite handler saw its lost lease while the worker ran")
                .expect("reported");
            tokio::time::timeout(PATIENCE, dropped_rx)
                .await
                .expect("the stubborn handler was dropped while the worker ran")
                .expect("reported");
        })
        .await
        .expect("run");
    assert_eq!(
        (report.completed, report.released, report.lost),
        (0, 0, 2),
        "neither outcome was written"
    );
    for id in [polite, stubborn] {
        assert_eq!(status(&queue, id).await, JobStatus::Cancelled);
    }
}

/// A blocking handler still running at the end of the shutdown grace cannot be stopped:
/// the worker holds the lease (renewing it) until the thread returns, so no other worker
/// can claim the job meanwhile; then it releases the job unspent.
pub async fn a_blocking_handler_past_the_shutdown_grace_holds_its_lease_until_it_returns<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let queue = plain_queue(h);
    let probe = BlockingProbe::default();
    let open = probe.register(&queue);
    let mut events = queue.events();
    let id = queue
        .enqueue("slow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .heartbeat_interval(Duration::from_millis(20))
            .shutdown_grace(Duration::from_millis(20)),
    )
    .expect("options");
    let stop = w.shutdown_handle();
    let run = tokio::spawn(async move { w.run().await });
    expect_event(&mut events, "the start", |e| {
        matches!(e, Event::Started { .. })
    })
    .await;
    stop.shutdown();
    // Well past the grace: the job would have been released by now.
    tokio::time::sleep(WATCH_WINDOW).await;
    let j = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(
        (j.status, j.attempt),
        (JobStatus::Running, 1),
        "released while its thread ran"
    );
    let other = queue
        .storage()
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["slow".into()],
            limit: 1,
            lease_duration: Duration::from_secs(30),
            holder: "another worker".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim");
    assert!(other.is_empty(), "another worker claimed the job");
    open.send(()).expect("open the gate");
    let report = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the worker stopped once the thread returned")
        .expect("join")
        .expect("run");
    // The thread returned its result after the attempt was given up: the job is
    // released unspent, to run again.
    assert_eq!(report.released, 1);
    let j = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!((j.status, j.attempt), (JobStatus::Pending, 0));
    assert_eq!(probe.starts(), 1);
}
