//! Engine conformance for what operators observe, through a real [`Queue`] and
//! [`Worker`]: the worker registry and health, and the events for reclaimed leases,
//! suspensions, cancellations, schedule ticks and worker starts and stops.

use super::ConformanceHarness;
use crate::storage::{DequeueParams, Storage, WorkerQueue, WorkerRecord};
use crate::{
    Event, EventStream, JobContext, JobOptions, JobStatus, Queue, Schedule, TaskError, Worker,
    WorkerOptions, WorkerState,
};
use std::time::Duration;

/// Waits for the first event matching `pred`, failing after a generous deadline so a
/// missing event fails the test instead of hanging it.
async fn expect_event(
    events: &mut EventStream,
    what: &str,
    pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(Duration::from_secs(30), events.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("no {what} event within 30 s"))
        .unwrap_or_else(|| panic!("event stream closed before {what}"))
}

fn queue<H: ConformanceHarness>(h: &H) -> Queue {
    let q = Queue::new(h.storage());
    q.register("t", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    q
}

/// A running worker is in the registry with its queues and is healthy; its heartbeat
/// renews the entry; a graceful stop removes it; started and stopped are events.
pub async fn worker_registers_renews_and_leaves<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let mut events = q.events();
    let worker = std::sync::Arc::new(
        Worker::new(
            q.clone(),
            WorkerOptions::new()
                .name("registry-test")
                .queue("default", 3)
                .queue("mail", 1)
                .heartbeat_interval(Duration::from_millis(20)),
        )
        .expect("worker"),
    );
    assert_eq!(worker.health().state, WorkerState::Idle);
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    expect_event(
        &mut events,
        "worker started",
        |e| matches!(e, Event::WorkerStarted { worker } if worker == "registry-test"),
    )
    .await;
    let listed = q.workers().await.expect("workers");
    assert_eq!(listed.len(), 1);
    let w = &listed[0];
    assert_eq!(w.record.name, "registry-test");
    assert!(!w.dead);
    assert_eq!(w.record.pid, std::process::id());
    assert_eq!(
        w.record.queues,
        [
            WorkerQueue {
                name: "default".into(),
                concurrency: 3
            },
            WorkerQueue {
                name: "mail".into(),
                concurrency: 1
            }
        ]
    );
    let first_seen = w.record.last_seen;
    let health = worker.health();
    assert_eq!(health.state, WorkerState::Running);
    assert!(
        health.last_storage_contact.is_some(),
        "registering reached storage"
    );

    // The heartbeat renews the entry: after the clock moves, last_seen follows it.
    h.advance(Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = q.workers().await.expect("workers")[0].record.last_seen;
        if seen - first_seen >= chrono::Duration::seconds(9) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never renewed the entry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A job runs: the health shows a claim.
    q.enqueue("t", &(), JobOptions::new())
        .await
        .expect("enqueue");
    expect_event(&mut events, "completed", |e| {
        matches!(e, Event::Completed { .. })
    })
    .await;
    assert!(worker.health().last_claim.is_some());

    worker.shutdown_handle().shutdown();
    run.await.expect("join").expect("run");
    expect_event(
        &mut events,
        "worker stopped",
        |e| matches!(e, Event::WorkerStopped { worker } if worker == "registry-test"),
    )
    .await;
    assert!(
        q.workers().await.expect("workers").is_empty(),
        "a graceful stop leaves"
    );
    assert_eq!(worker.health().state, WorkerState::Idle);
}

/// A worker that stopped renewing shows as dead after its lease time, and a live
/// worker's sweep removes it once the retention has passed.
pub async fn dead_workers_show_as_dead_then_go<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let s = q.storage();
    let now = s.now().await.expect("now");
    s.register_worker(WorkerRecord {
        name: "crashed".into(),
        host: "elsewhere".into(),
        pid: 1,
        queues: vec![],
        version: "0.0.1".into(),
        started_at: now,
        last_seen: now,
        lease_ms: 30_000,
    })
    .await
    .expect("register");
    assert!(!q.workers().await.expect("workers")[0].dead);
    h.advance(Duration::from_secs(31)).await;
    assert!(
        q.workers().await.expect("workers")[0].dead,
        "dead after its lease time"
    );
    let worker = Worker::new(
        q.clone(),
        WorkerOptions::new().worker_retention(Duration::from_secs(60)),
    )
    .expect("worker");
    worker.drain().await.expect("drain");
    assert_eq!(
        q.workers().await.expect("workers").len(),
        1,
        "kept within retention"
    );
    h.advance(Duration::from_secs(61)).await;
    worker.drain().await.expect("drain");
    assert!(
        q.workers().await.expect("workers").is_empty(),
        "removed once retention passed"
    );
}

/// A job whose worker died is released by the sweep with a lease-reclaimed event, and
/// runs again.
pub async fn reclaimed_leases_are_events<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let mut events = q.events();
    let id = q
        .enqueue("t", &(), JobOptions::new())
        .await
        .expect("enqueue");
    // A worker that claims and then dies: the lease is taken and never renewed.
    let claimed = q
        .storage()
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 1,
            lease_duration: Duration::from_secs(30),
            holder: "dead-worker".into(),
            forbidden_flags: vec![],
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    h.advance(Duration::from_secs(31)).await;
    let report = Worker::new(q.clone(), WorkerOptions::new())
        .expect("worker")
        .drain()
        .await
        .expect("drain");
    assert_eq!(report.completed, 1);
    let e = expect_event(&mut events, "lease reclaimed", |e| {
        matches!(e, Event::LeaseReclaimed { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::LeaseReclaimed {
            job_id: id,
            task: "t".into(),
            attempt: 1,
            failed: false
        }
    );
}

/// Suspensions, cancellations and schedule ticks are events.
pub async fn suspend_cancel_and_schedule_ticks_are_events<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("sleeper", |ctx: JobContext, _: ()| async move {
        ctx.sleep(Duration::from_secs(3600)).await?;
        Ok::<_, TaskError>(())
    });
    let mut events = q.events();
    let sleeper = q
        .enqueue("sleeper", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let worker = Worker::new(q.clone(), WorkerOptions::new()).expect("worker");
    worker.drain().await.expect("drain");
    let e = expect_event(&mut events, "suspended", |e| {
        matches!(e, Event::Suspended { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Suspended {
            job_id: sleeper,
            task: "sleeper".into(),
            attempt: 1
        }
    );
    assert!(q.cancel(sleeper).await.expect("cancel"));
    assert_eq!(
        expect_event(&mut events, "cancelled", |e| matches!(
            e,
            Event::Cancelled { .. }
        ))
        .await,
        Event::Cancelled { job_id: sleeper }
    );
    assert_eq!(
        q.get_job(sleeper)
            .await
            .expect("get")
            .expect("exists")
            .status,
        JobStatus::Cancelled
    );

    q.add_schedule(
        "every-minute",
        Schedule::every(Duration::from_secs(60)).task("t", &()),
    )
    .await
    .expect("schedule");
    h.advance(Duration::from_secs(61)).await;
    worker.drain().await.expect("drain");
    match expect_event(&mut events, "schedule fired", |e| {
        matches!(e, Event::ScheduleFired { .. })
    })
    .await
    {
        Event::ScheduleFired { schedule, job_id } => {
            assert_eq!(schedule, "every-minute");
            let j = q.get_job(job_id).await.expect("get").expect("exists");
            assert_eq!(j.task, "t");
        }
        other => panic!("unexpected {other:?}"),
    }
}
