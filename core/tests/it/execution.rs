//! Ordering, delays, panics, timeouts, concurrency, wake-ups, leases.

use super::{setup, status, worker};
use durable_jobs::Storage;
use durable_jobs::{
    DequeueParams, Event, JobContext, JobOptions, JobStatus, TaskError, Worker, WorkerOptions,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Barrier, Notify};

#[tokio::test]
async fn jobs_run_by_priority_then_age() {
    let (queue, clock) = setup();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    queue.register_fn("rec", move |n: i32| {
        let o = o.clone();
        async move {
            o.lock().expect("lock").push(n);
            Ok::<_, TaskError>(())
        }
    });
    for (n, prio) in [(1, 0), (2, 10), (3, 0), (4, 10), (5, -5)] {
        queue
            .enqueue("rec", &n, JobOptions::new().priority(prio))
            .await
            .expect("enqueue");
        clock.advance(Duration::from_millis(1));
    }
    worker(&queue, 1).drain().await.expect("drain");
    assert_eq!(*order.lock().expect("lock"), vec![2, 4, 1, 3, 5]);
}

#[tokio::test]
async fn delayed_jobs_wait_for_the_clock() {
    let (queue, clock) = setup();
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let later = queue
        .enqueue("t", &(), JobOptions::new().delay(Duration::from_secs(3600)))
        .await
        .expect("enqueue");
    let at = queue
        .enqueue(
            "t",
            &(),
            JobOptions::new().at(clock_now(&clock) + chrono::Duration::minutes(10)),
        )
        .await
        .expect("enqueue");
    let w = worker(&queue, 2);
    assert_eq!(w.drain().await.expect("drain").completed, 0);
    clock.advance(Duration::from_secs(600));
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(status(&queue, at).await, JobStatus::Completed);
    assert_eq!(status(&queue, later).await, JobStatus::Pending);
    clock.advance(Duration::from_secs(3000));
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(status(&queue, later).await, JobStatus::Completed);
}

fn clock_now(clock: &durable_jobs::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use durable_jobs::Clock;
    clock.now()
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_and_the_worker_lives_on() {
    let (queue, clock) = setup();
    queue.register_fn("boom", |_: ()| async {
        if true {
            panic!("kaboom");
        }
        Ok::<_, TaskError>(())
    });
    queue.register_fn("fine", |_: ()| async { Ok::<_, TaskError>(()) });
    let boom = queue
        .enqueue("boom", &(), JobOptions::new().retries(1))
        .await
        .expect("enqueue");
    let fine = queue
        .enqueue("fine", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 2);
    let r = w.drain().await.expect("drain");
    assert_eq!((r.completed, r.retried), (1, 1));
    assert_eq!(status(&queue, fine).await, JobStatus::Completed);
    let job = queue.get_job(boom).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Retrying);
    assert!(job.last_error.as_deref().unwrap_or("").contains("kaboom"));
    clock.advance(Duration::from_secs(3600));
    assert_eq!(w.drain().await.expect("drain").failed, 1);
    assert_eq!(status(&queue, boom).await, JobStatus::Failed);
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_the_attempt() {
    let (queue, _clock) = setup();
    queue.register_fn("hang", |_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, TaskError>(())
    });
    let id = queue
        .enqueue(
            "hang",
            &(),
            JobOptions::new()
                .retries(0)
                .timeout(Duration::from_millis(20)),
        )
        .await
        .expect("enqueue");
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").failed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("timed out"));
}

#[tokio::test]
async fn each_queue_has_its_own_concurrency() {
    let (queue, _clock) = setup();
    let barrier = Arc::new(Barrier::new(2));
    let running = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (b, r, m) = (barrier.clone(), running.clone(), max.clone());
    queue.register_fn("pair", move |_: ()| {
        let (b, r, m) = (b.clone(), r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            // Two at a time must run together, or this never passes.
            b.wait().await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    });
    queue.register_fn("solo", |_: ()| async { Ok::<_, TaskError>(()) });
    for _ in 0..10 {
        queue
            .enqueue("pair", &(), JobOptions::new().queue("pairs"))
            .await
            .expect("enqueue");
    }
    for _ in 0..3 {
        queue
            .enqueue("solo", &(), JobOptions::new().queue("solo"))
            .await
            .expect("enqueue");
    }
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("pairs", 2).queue("solo", 1),
    )
    .expect("options");
    let report = tokio::time::timeout(Duration::from_secs(30), w.drain())
        .await
        .expect("no deadlock")
        .expect("drain");
    assert_eq!(report.completed, 13);
    assert_eq!(max.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_local_enqueue_wakes_an_idle_worker_at_once() {
    let (queue, _clock) = setup();
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let mut events = queue.events();
    // A one-hour poll interval: only the wake-up can make this job run.
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().poll_interval(Duration::from_secs(3600)),
    )
    .expect("options");
    let stop = w.shutdown_handle();
    let run = tokio::spawn(async move { w.run().await });
    tokio::task::yield_now().await;
    let id = queue
        .enqueue("t", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        events.wait_for(|e| matches!(e, Event::Completed { job_id, .. } if *job_id == id)),
    )
    .await
    .expect("woken without polling");
    assert!(done.is_some());
    stop.shutdown();
    assert_eq!(run.await.expect("join").expect("run").completed, 1);
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_leased() {
    let (queue, clock) = setup();
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (rel, st) = (release.clone(), started.clone());
    queue.register_fn("long", move |_: ()| {
        let (rel, st) = (rel.clone(), st.clone());
        async move {
            st.notify_one();
            rel.notified().await;
            Ok::<_, TaskError>(())
        }
    });
    let id = queue
        .enqueue("long", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let opts = WorkerOptions::new()
        .lease_duration(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_millis(10))
        .sweep_interval(Duration::from_secs(3600));
    let w = Worker::new(queue.clone(), opts).expect("options");
    let stop = w.shutdown_handle();
    let run = tokio::spawn(async move { w.run().await });
    started.notified().await;
    let storage = queue.storage().clone();
    let expiry = || {
        let s = storage.clone();
        async move {
            s.get_job(id)
                .await
                .expect("get")
                .expect("exists")
                .lease
                .expect("leased")
                .expires_at
        }
    };
    // Move virtual time 20s at a time, past the 30s lease several times over; after each
    // step wait until a heartbeat has renewed the lease beyond the new now.
    for _ in 0..4 {
        clock.advance(Duration::from_secs(20));
        let now = clock_now(&clock);
        tokio::time::timeout(Duration::from_secs(10), async {
            while expiry().await <= now {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("heartbeat renewed the lease");
        assert_eq!(
            storage
                .release_stale_locks()
                .await
                .expect("sweep")
                .touched(),
            0
        );
    }
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), async {
        while status(&queue, id).await != JobStatus::Completed {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("completed");
    stop.shutdown();
    let report = run.await.expect("join").expect("run");
    assert_eq!((report.completed, report.lost), (1, 0));
}

#[tokio::test]
async fn a_dead_workers_job_is_reclaimed_and_its_lease_fenced() {
    let (queue, clock) = setup();
    queue.register_fn("t", |n: i32| async move { Ok::<_, TaskError>(n + 1) });
    let id = queue
        .enqueue("t", &1, JobOptions::new())
        .await
        .expect("enqueue");
    // A worker that claims and then dies: it never heartbeats or completes.
    let dead = queue
        .storage()
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 1,
            lease_duration: Duration::from_secs(30),
            holder: "dead".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim")
        .remove(0);
    let w = worker(&queue, 1);
    assert_eq!(
        w.drain().await.expect("drain").completed,
        0,
        "lease still live"
    );
    clock.advance(Duration::from_secs(31));
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!((job.status, job.attempt), (JobStatus::Completed, 2));
    assert_eq!(job.result, Some(json!(2)));
    let stale = queue.storage().complete(&dead.lease, json!("stale")).await;
    assert!(matches!(stale, Err(durable_jobs::Error::LeaseLost { .. })));
}

#[tokio::test]
async fn job_context_reports_the_attempt() {
    let (queue, clock) = setup();
    queue.register("attempts", |ctx: JobContext, _: ()| async move {
        if ctx.attempt() < 3 {
            return Err(TaskError::retry(format!("attempt {}", ctx.attempt())));
        }
        Ok(ctx.attempt())
    });
    let id = queue
        .enqueue("attempts", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    for _ in 0..3 {
        w.drain().await.expect("drain");
        clock.advance(Duration::from_secs(3600));
    }
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(3)));
}
