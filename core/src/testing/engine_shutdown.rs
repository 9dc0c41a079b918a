//! Engine conformance for stopping: graceful shutdown releases unfinished and buffered
//! jobs unspent, and handlers see the stop as cancellation.

use super::support::plain_queue;
use super::ConformanceHarness;
use crate::{Event, JobContext, JobOptions, JobStatus, TaskError, Worker, WorkerOptions};
use std::time::Duration;

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
