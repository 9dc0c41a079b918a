//! Engine conformance for running jobs: order, delays, panics, timeouts, per-queue
//! concurrency, serial keys, wake-ups, inline and spawned handlers, heartbeats and reclaims.

use super::support::{
    expect_event, job, plain_queue, queue, status, until_status, worker, BlockingProbe, PATIENCE,
    WATCH_WINDOW,
};
use super::ConformanceHarness;
use crate::storage::{DequeueParams, Storage};
use crate::{
    Error, Event, JobContext, JobId, JobOptions, JobStatus, Queue, Task, TaskError, Worker,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Barrier, Notify};

/// Jobs sharing a serial key never run at the same time, even on many slots.
pub async fn serial_keys_run_one_at_a_time_through_the_worker<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let running = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let overlap = Arc::new(AtomicBool::new(false));
    let (r, o) = (running.clone(), overlap.clone());
    q.register("pay", move |_ctx: JobContext, account: String| {
        let (r, o) = (r.clone(), o.clone());
        async move {
            {
                let mut m = r.lock().expect("lock");
                let n = m.entry(account.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    o.store(true, Ordering::SeqCst);
                }
            }
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            *r.lock().expect("lock").entry(account).or_default() -= 1;
            Ok::<_, TaskError>(())
        }
    });
    for i in 0..12 {
        let account = format!("acct-{}", i % 2);
        q.enqueue(
            "pay",
            &account,
            JobOptions::new().serial_key(account.clone()),
        )
        .await
        .expect("enqueue");
    }
    let report = worker(&q, 8).drain().await.expect("drain");
    assert_eq!(report.completed, 12);
    assert!(
        !overlap.load(Ordering::SeqCst),
        "two jobs of one serial key overlapped"
    );
}

/// A handler reaches its outcome whether it finishes on its first poll (the queue loop
/// starts it in place) or waits (it goes on as a task of its own, woken through its own
/// waker), and a panic fails the attempt on either path.
pub async fn handlers_finish_whether_or_not_they_wait<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("now", |_ctx: JobContext, n: i64| async move {
        Ok::<_, TaskError>(n + 1)
    });
    // yield_now is Pending on its first poll, whatever the waker.
    q.register("yield", |_ctx: JobContext, n: i64| async move {
        tokio::task::yield_now().await;
        Ok::<_, TaskError>(n + 2)
    });
    // Waits for the test to open a gate once the handler says it is waiting.
    let gate = Arc::new(tokio::sync::Notify::new());
    let (waiting_tx, mut waiting_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let g = gate.clone();
    q.register("gate", move |_ctx: JobContext, n: i64| {
        let (g, waiting) = (g.clone(), waiting_tx.clone());
        async move {
            let opened = g.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let _ = waiting.send(());
            opened.await;
            Ok::<_, TaskError>(n + 3)
        }
    });
    q.register("early_panic", |_ctx: JobContext, _: ()| async move {
        if true {
            panic!("early kaboom");
        }
        Ok::<_, TaskError>(())
    });
    q.register("late_panic", |_ctx: JobContext, _: ()| async move {
        tokio::task::yield_now().await;
        if true {
            panic!("late kaboom");
        }
        Ok::<_, TaskError>(())
    });
    let once = || JobOptions::new().retries(0);
    let mut ids = Vec::new();
    for task in ["now", "yield", "gate"] {
        ids.push(q.enqueue(task, &10, once()).await.expect("enqueue"));
    }
    let early = q
        .enqueue("early_panic", &(), once())
        .await
        .expect("enqueue");
    let late = q.enqueue("late_panic", &(), once()).await.expect("enqueue");
    let opener = tokio::spawn(async move {
        if waiting_rx.recv().await.is_some() {
            // notify_one keeps a permit if the waiter is not registered yet: no lost wake.
            gate.notify_one();
        }
    });
    // No polling to fall back on: every outcome, a failure for good included, must wake
    // the queue loop to look again, or the drain would never see the queue idle.
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 8)
            .poll_interval(Duration::from_secs(3600)),
    )
    .expect("worker options");
    let report = tokio::time::timeout(Duration::from_secs(60), w.drain())
        .await
        .expect("the drain waited for a poll: an outcome did not wake the queue loop")
        .expect("drain");
    opener.await.expect("opener");
    assert_eq!((report.completed, report.failed), (3, 2));
    for (id, want) in ids.into_iter().zip([11, 12, 13]) {
        let j = job(&q, id).await;
        assert_eq!(j.status, JobStatus::Completed);
        assert_eq!(j.result, Some(json!(want)));
    }
    for (id, message) in [(early, "early kaboom"), (late, "late kaboom")] {
        let j = job(&q, id).await;
        assert_eq!(j.status, JobStatus::Failed);
        let error = j.last_error.unwrap_or_default();
        assert!(
            error.contains("handler panicked") && error.contains(message),
            "{error}"
        );
    }
}

/// Quick handlers run in place on their queue loop, so two in a row run on one task.
/// Handlers whose first polls run long (here 5 ms of blocking work each, three in a row)
/// stall the loop only so often: every later handler of that loop starts as a task of its
/// own, on a task other than the loop's.
pub async fn slow_first_polls_move_later_handlers_to_tasks<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    q.register("rec", move |_ctx: JobContext, n: i32| {
        let s = s.clone();
        async move {
            s.lock().expect("lock").push((n, tokio::task::try_id()));
            if (3..=5).contains(&n) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<_, TaskError>(())
        }
    });
    // Priorities fix the order: 1 and 2 (quick), 3 to 5 (slow), 6 and 7 (quick).
    for n in 1..=7 {
        q.enqueue("rec", &n, JobOptions::new().priority(10 - n))
            .await
            .expect("enqueue");
    }
    assert_eq!(worker(&q, 1).drain().await.expect("drain").completed, 7);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    // Inline starts end only after three slow first polls in a row, so jobs 1 and 2 ran in
    // place on the loop's task whatever the machine's load made of their quick polls.
    let looped = seen[0].1;
    assert!(looped.is_some(), "job 1 ran outside any task");
    assert_eq!(
        seen[1].1, looped,
        "jobs 1 and 2 did not both run on the loop"
    );
    for (n, task) in &seen[5..] {
        assert!(
            task.is_some() && *task != looped,
            "job {n} ran on the loop's task {task:?}"
        );
    }
    assert_ne!(seen[5].1, seen[6].1);
}

/// Waits until every job in `ids` holds a lease that `ready` accepts, and returns each
/// job's lease expiry. Gives up after 30 s.
async fn leases_when(
    q: &Queue,
    ids: &[JobId],
    ready: impl Fn(JobId, chrono::DateTime<chrono::Utc>) -> bool,
) -> HashMap<JobId, chrono::DateTime<chrono::Utc>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = HashMap::new();
        for &id in ids {
            if let Some(lease) = job(q, id).await.lease {
                if ready(id, lease.expires_at) {
                    seen.insert(id, lease.expires_at);
                }
            }
        }
        if seen.len() == ids.len() {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} jobs reached the expected lease: {seen:?}",
            seen.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker renews the lease of every job it holds, those waiting in its local queue as
/// well as the running ones: with the clock moved past their first expiry none is
/// reclaimed, and each completes on its first attempt.
pub async fn heartbeats_renew_running_and_buffered_leases<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    q.register("hold", move |_ctx: JobContext, n: i32| {
        let mut release = release_rx.clone();
        let started = started_tx.clone();
        async move {
            let _ = started.send(n);
            let _ = release.wait_for(|r| *r).await;
            Ok::<_, TaskError>(n)
        }
    });
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            q.enqueue("hold", &n, JobOptions::new())
                .await
                .expect("enqueue"),
        );
    }
    let lease = Duration::from_secs(30);
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 2)
            .prefetch(2)
            .lease_duration(lease)
            .heartbeat_interval(Duration::from_millis(10)),
    )
    .expect("options");
    let report = w
        .run_until(async {
            for _ in 0..2 {
                started_rx.recv().await.expect("a handler started");
            }
            // Two run; the other two wait in the local queue, leased as well.
            let first = leases_when(&q, &ids, |_, _| true).await;
            h.advance(lease * 2 / 3).await;
            leases_when(&q, &ids, |id, expires| {
                first.get(&id).is_some_and(|&was| expires > was + lease / 3)
            })
            .await;
            // Past every first expiry, short of the renewed ones.
            h.advance(lease * 2 / 3).await;
            assert_eq!(
                q.storage()
                    .release_stale_locks()
                    .await
                    .expect("reclaim")
                    .touched(),
                0,
                "a held lease ran out"
            );
            release_tx.send_replace(true);
            for _ in 2..4 {
                started_rx.recv().await.expect("a buffered job started");
            }
            for &id in &ids {
                while job(&q, id).await.status != JobStatus::Completed {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("run");
    assert_eq!((report.completed, report.lost), (4, 0));
    for &id in &ids {
        assert_eq!(job(&q, id).await.attempt, 1, "job {id} ran more than once");
    }
}

#[derive(Serialize, Deserialize)]
struct Double {
    n: i64,
}

impl Task for Double {
    const NAME: &'static str = "double";
    type Output = i64;
    async fn run(self, _ctx: JobContext) -> Result<i64, TaskError> {
        Ok(self.n * 2)
    }
}

/// Jobs run by priority, then by age.
pub async fn jobs_run_by_priority_then_age<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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
        h.advance(Duration::from_millis(1)).await;
    }
    worker(&queue, 1).drain().await.expect("drain");
    assert_eq!(*order.lock().expect("lock"), vec![2, 4, 1, 3, 5]);
}

/// Jobs delayed or set at a time wait for the storage clock to reach it.
pub async fn delayed_jobs_wait_for_the_clock<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let now = queue.storage().now().await.expect("now");
    let later = queue
        .enqueue("t", &(), JobOptions::new().delay(Duration::from_secs(3600)))
        .await
        .expect("enqueue");
    let at = queue
        .enqueue(
            "t",
            &(),
            JobOptions::new().at(now + chrono::Duration::minutes(10)),
        )
        .await
        .expect("enqueue");
    let w = worker(&queue, 2);
    assert_eq!(w.drain().await.expect("drain").completed, 0);
    h.advance(Duration::from_secs(600)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(status(&queue, at).await, JobStatus::Completed);
    assert_eq!(status(&queue, later).await, JobStatus::Pending);
    h.advance(Duration::from_secs(3000)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(status(&queue, later).await, JobStatus::Completed);
}

/// A panicking handler fails its attempt and the worker runs on.
pub async fn a_panicking_handler_fails_its_attempt_and_the_worker_lives_on<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let queue = plain_queue(h);
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
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(w.drain().await.expect("drain").failed, 1);
    assert_eq!(status(&queue, boom).await, JobStatus::Failed);
}

/// A handler past its job's timeout fails the attempt.
pub async fn a_job_past_its_timeout_fails_the_attempt<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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

/// Each queue runs up to its own concurrency, both at once: two at a time on one (they
/// meet at a barrier, so fewer would deadlock, and more is seen), and one at a time on
/// the other, whose first job stays running until every job of the first queue finished,
/// so a second one would have had every chance to start beside it.
pub async fn each_queue_has_its_own_concurrency<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let (solo_tx, mut solo_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let solo_running = Arc::new(AtomicUsize::new(0));
    let solo_max = Arc::new(AtomicUsize::new(0));
    let solo_started = Arc::new(AtomicUsize::new(0));
    let (sr, sm, ss) = (solo_running.clone(), solo_max.clone(), solo_started.clone());
    queue.register_fn("solo", move |_: ()| {
        let (sr, sm, ss, mut gate) = (sr.clone(), sm.clone(), ss.clone(), gate_rx.clone());
        let started = solo_tx.clone();
        async move {
            let now = sr.fetch_add(1, Ordering::SeqCst) + 1;
            sm.fetch_max(now, Ordering::SeqCst);
            ss.fetch_add(1, Ordering::SeqCst);
            let _ = started.send(());
            let _ = gate.wait_for(|open| *open).await;
            sr.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    });
    for _ in 0..10 {
        queue
            .enqueue("pair", &(), JobOptions::new().queue("pairs"))
            .await
            .expect("enqueue");
    }
    let mut solos = Vec::new();
    for _ in 0..3 {
        solos.push(
            queue
                .enqueue("solo", &(), JobOptions::new().queue("solo"))
                .await
                .expect("enqueue"),
        );
    }
    let mut events = queue.events();
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("pairs", 2).queue("solo", 1),
    )
    .expect("options");
    let report = w
        .run_until(async {
            tokio::time::timeout(PATIENCE, solo_rx.recv())
                .await
                .expect("a solo job started")
                .expect("the handler reported");
            for _ in 0..10 {
                expect_event(
                    &mut events,
                    "a pair completed",
                    |e| matches!(e, Event::Completed { task, .. } if task == "pair"),
                )
                .await;
            }
            assert_eq!(
                solo_started.load(Ordering::SeqCst),
                1,
                "a second solo job started beside the first"
            );
            gate_tx.send_replace(true);
            for &id in &solos {
                until_status(&queue, id, JobStatus::Completed).await;
            }
        })
        .await
        .expect("run");
    assert_eq!(report.completed, 13);
    assert_eq!(max.load(Ordering::SeqCst), 2);
    assert_eq!(solo_max.load(Ordering::SeqCst), 1);
}

/// An enqueue through the same queue wakes an idle worker without waiting for a poll.
pub async fn a_local_enqueue_wakes_an_idle_worker_at_once<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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

/// Heartbeats keep a long job's lease ahead of the clock, so no sweep reclaims it.
pub async fn heartbeats_keep_a_long_job_leased<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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
    // step wait until a heartbeat has renewed the lease from the new now: more than 10s
    // ahead of it, which a renewal from before the step (at most now - 20s + 30s) is not.
    // So the lease never runs out, whenever the heartbeats come.
    for _ in 0..4 {
        h.advance(Duration::from_secs(20)).await;
        let renewed_after = storage.now().await.expect("now") + chrono::Duration::seconds(10);
        tokio::time::timeout(PATIENCE, async {
            while expiry().await <= renewed_after {
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
    until_status(&queue, id, JobStatus::Completed).await;
    stop.shutdown();
    let report = run.await.expect("join").expect("run");
    assert_eq!((report.completed, report.lost), (1, 0));
}

/// A job claimed by a worker that died is reclaimed once its lease expires, and the dead
/// worker's lease can no longer complete it.
pub async fn a_dead_workers_job_is_reclaimed_and_its_lease_fenced<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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
    h.advance(Duration::from_secs(31)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!((job.status, job.attempt), (JobStatus::Completed, 2));
    assert_eq!(job.result, Some(json!(2)));
    let stale = queue.storage().complete(&dead.lease, json!("stale")).await;
    assert!(matches!(stale, Err(crate::Error::LeaseLost { .. })));
}

/// The job context reports which attempt is running.
pub async fn job_context_reports_the_attempt<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
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
        h.advance(Duration::from_secs(3600)).await;
    }
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(3)));
}

/// Every registration form runs and stores its result.
pub async fn every_registration_form_runs_and_stores_its_result<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register("with_ctx", |ctx: JobContext, n: i64| async move {
        Ok::<_, TaskError>(json!({ "n": n, "job": ctx.job_id() }))
    });
    queue.register_fn("no_ctx", |s: String| async move {
        Ok::<_, TaskError>(s.to_uppercase())
    });
    queue.register_fn("no_result", |_: ()| async move { Ok::<_, TaskError>(()) });
    queue.register_blocking("blocking", |v: Vec<i32>| {
        Ok::<_, TaskError>(v.iter().sum::<i32>())
    });
    queue.register_task::<Double>();
    let a = queue
        .enqueue("with_ctx", &7, JobOptions::new())
        .await
        .expect("enqueue");
    let b = queue
        .enqueue("no_ctx", &"hi", JobOptions::new())
        .await
        .expect("enqueue");
    let c = queue
        .enqueue("no_result", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let d = queue
        .enqueue("blocking", &vec![1, 2, 3], JobOptions::new())
        .await
        .expect("enqueue");
    let e = queue
        .enqueue_task(&Double { n: 21 }, JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&queue, 4).drain().await.expect("drain");
    assert_eq!(report.completed, 5);
    let result = |id| {
        let q = queue.clone();
        async move { q.get_job(id).await.expect("get").expect("exists").result }
    };
    assert_eq!(result(a).await, Some(json!({ "n": 7, "job": a })));
    assert_eq!(result(b).await, Some(json!("HI")));
    assert_eq!(result(c).await, Some(json!(null)));
    assert_eq!(result(d).await, Some(json!(6)));
    assert_eq!(result(e).await, Some(json!(42)));
}

/// Arguments that do not fit the handler's type are refused at enqueue, one or many, and
/// nothing is inserted.
pub async fn arguments_that_do_not_fit_are_refused_at_enqueue<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("takes_int", |_: i64| async { Ok::<_, TaskError>(()) });
    let err = queue
        .enqueue("takes_int", &"text", JobOptions::new())
        .await
        .expect_err("a string for an int");
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
    let err = queue
        .enqueue_many("takes_int", vec![json!(1), json!("x")], JobOptions::new())
        .await
        .expect_err("one of the batch does not fit");
    assert!(matches!(err, Error::InvalidPayload { .. }));
    assert!(
        queue
            .storage()
            .list_jobs(Default::default())
            .await
            .expect("list")
            .is_empty(),
        "nothing inserted"
    );
}

/// A stored payload that does not fit the handler fails the job at once, without retry.
pub async fn payload_that_does_not_deserialize_fails_without_retry<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("takes_int", |_: i64| async { Ok::<_, TaskError>(()) });
    // A producer elsewhere (or SQL) can store any JSON; the worker must fail it cleanly.
    let id = queue
        .enqueue_raw(
            "takes_int",
            json!({"not": "an int"}),
            JobOptions::new().retries(5),
        )
        .await
        .expect("raw enqueue");
    let report = worker(&queue, 1).drain().await.expect("drain");
    assert_eq!((report.failed, report.retried), (1, 0));
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempt, 1);
    let err = job.last_error.expect("error stored");
    assert!(err.contains("does not fit its argument type"), "{err}");
}

/// A dedupe key returns the unfinished job holding it, and is free again once it finished.
pub async fn dedupe_key_returns_the_existing_job<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("t", |_: i32| async { Ok::<_, TaskError>(()) });
    let a = queue
        .enqueue("t", &1, JobOptions::new().dedupe_key("k"))
        .await
        .expect("enqueue");
    let b = queue
        .enqueue("t", &2, JobOptions::new().dedupe_key("k"))
        .await
        .expect("enqueue");
    assert_eq!(a, b);
    worker(&queue, 1).drain().await.expect("drain");
    assert_eq!(status(&queue, a).await, JobStatus::Completed);
    let c = queue
        .enqueue("t", &3, JobOptions::new().dedupe_key("k"))
        .await
        .expect("enqueue");
    assert_ne!(a, c);
}

/// A blocking handler past its job's timeout cannot be stopped: the worker holds the lease
/// (renewing it) until the thread returns, so no second attempt starts beside it; then
/// the attempt fails as timed out and the retry runs.
pub async fn a_blocking_handler_past_its_timeout_holds_its_lease_until_it_returns<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let q = queue(h);
    let probe = BlockingProbe::default();
    let open = probe.register(&q);
    let mut events = q.events();
    let id = q
        .enqueue(
            "slow",
            &(),
            JobOptions::new()
                .retries(1)
                .timeout(Duration::from_millis(20)),
        )
        .await
        .expect("enqueue");
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 2)
            .heartbeat_interval(Duration::from_millis(20)),
    )
    .expect("options");
    let report = w
        .run_until(async {
            expect_event(&mut events, "the first start", |e| {
                matches!(e, Event::Started { attempt: 1, .. })
            })
            .await;
            // Well past the timeout: a retry would have started by now.
            tokio::time::sleep(WATCH_WINDOW).await;
            assert_eq!(
                probe.starts(),
                1,
                "a second attempt started beside the thread"
            );
            let j = job(&q, id).await;
            assert_eq!((j.status, j.attempt), (JobStatus::Running, 1));
            open.send(()).expect("open the gate");
            until_status(&q, id, JobStatus::Completed).await;
        })
        .await
        .expect("run");
    assert!(!probe.overlapped(), "two attempts ran at once");
    assert_eq!((report.retried, report.completed), (1, 1));
    let j = job(&q, id).await;
    assert_eq!(j.attempt, 2);
}
