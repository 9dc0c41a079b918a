//! Engine conformance: the workflow primitives driven through a real [`Queue`] and
//! [`Worker`] on each backend. The [`crate::engine_conformance_tests`] macro turns them
//! into one test each.

use super::ConformanceHarness;
use crate::storage::Storage;
use crate::{
    call, BundleItem, BundleOptions, Event, FanOut, JobContext, JobId, JobOptions, JobStatus,
    Queue, RetryPolicy, TaskError, Worker, WorkerOptions,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts side effects per name, to prove what ran how often.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    fn hit(&self, name: &str) -> u32 {
        let mut m = self.0.lock().expect("runs lock");
        let n = m.entry(name.into()).or_default();
        *n += 1;
        *n
    }
    fn get(&self, name: &str) -> u32 {
        self.0
            .lock()
            .expect("runs lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

fn queue<H: ConformanceHarness>(h: &H) -> Queue {
    let q = Queue::new(h.storage());
    // Retries come at once, so a test needs no clock to see them.
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    q
}

fn worker(q: &Queue, concurrency: usize) -> Worker {
    Worker::new(
        q.clone(),
        WorkerOptions::new().queue("default", concurrency),
    )
    .expect("worker options")
}

async fn job(q: &Queue, id: JobId) -> crate::Job {
    q.get_job(id).await.expect("get_job").expect("job exists")
}

/// A step runs once; a retry returns its stored result.
pub async fn step_runs_once_across_retries<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    q.register("flow", move |ctx: JobContext, _: ()| {
        let r = r.clone();
        async move {
            let r2 = r.clone();
            let charged: String = ctx
                .step("charge", move |_ctx| async move {
                    r2.hit("charge");
                    Ok::<_, TaskError>("ch_123".to_string())
                })
                .await?;
            if r.hit("after") == 1 {
                return Err(TaskError::retry("crash after the step"));
            }
            Ok::<_, TaskError>(charged)
        }
    });
    let id = q
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let report = worker(&q, 1).drain().await.expect("drain");
    assert_eq!((report.retried, report.completed), (1, 1));
    assert_eq!(runs.get("charge"), 1);
    assert_eq!(job(&q, id).await.result, Some(json!("ch_123")));
}

/// Three calls, a failure after the second: the retry runs only the third.
pub async fn retried_workflow_runs_only_unfinished_calls<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    for name in ["one", "two", "three"] {
        let r = runs.clone();
        q.register(name, move |_ctx: JobContext, n: i64| {
            let r = r.clone();
            async move {
                r.hit(name);
                Ok::<_, TaskError>(n + 1)
            }
        });
    }
    let failed = Arc::new(AtomicBool::new(false));
    let f = failed.clone();
    q.register("flow", move |ctx: JobContext, n: i64| {
        let f = f.clone();
        async move {
            let a: i64 = call(&ctx, "one", &n).await?;
            let b: i64 = call(&ctx, "two", &a).await?;
            if !f.swap(true, Ordering::SeqCst) {
                return Err(TaskError::retry("crash"));
            }
            let inner = ctx.clone();
            // A nested scope: a step that makes its own call.
            let c: i64 = ctx
                .step("wrap", move |sctx| async move {
                    let _ = inner;
                    call::<i64, _>(&sctx, "three", &b).await
                })
                .await?;
            Ok::<_, TaskError>(c)
        }
    });
    let id = q
        .enqueue("flow", &0, JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(
        (runs.get("one"), runs.get("two"), runs.get("three")),
        (1, 1, 1)
    );
    assert_eq!(job(&q, id).await.result, Some(json!(3)));
    let keys: Vec<String> = q
        .storage()
        .list_checkpoints(id)
        .await
        .expect("cps")
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert!(
        keys.contains(&"2/0".to_string()),
        "nested key recorded: {keys:?}"
    );
}

/// A sleeping job waits without a slot and resumes at its time, on a new worker.
pub async fn sleep_frees_the_slot_and_resumes_on_time<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    q.register("sleeper", move |ctx: JobContext, _: ()| {
        let r = r.clone();
        async move {
            r.hit("before");
            ctx.sleep(Duration::from_secs(60)).await?;
            r.hit("after");
            Ok::<_, TaskError>("woke")
        }
    });
    q.register("other", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    let id = q
        .enqueue("sleeper", &(), JobOptions::new().priority(10))
        .await
        .expect("enqueue");
    let other = q
        .enqueue("other", &(), JobOptions::new())
        .await
        .expect("enqueue");
    // One slot: the other job can only run because the sleeper gave its slot back.
    let report = worker(&q, 1).drain().await.expect("drain");
    assert_eq!((report.suspended, report.completed), (1, 1));
    assert_eq!(job(&q, other).await.status, JobStatus::Completed);
    let j = job(&q, id).await;
    assert_eq!((j.status, j.attempt), (JobStatus::Waiting, 0));
    // Long periods: on PostgreSQL the database clock also runs in real time.
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(
        worker(&q, 1).drain().await.expect("drain").completed,
        0,
        "not yet"
    );
    h.advance(Duration::from_secs(31)).await;
    // A brand-new worker (as after a restart of every worker) resumes it.
    let mut done = worker(&q, 1).drain().await.expect("drain").completed;
    for _ in 0..50 {
        if done > 0 {
            break;
        }
        h.advance(Duration::from_millis(100)).await;
        done = worker(&q, 1).drain().await.expect("drain").completed;
    }
    assert_eq!(done, 1);
    assert_eq!((runs.get("before"), runs.get("after")), (2, 1));
    assert_eq!(job(&q, id).await.result, Some(json!("woke")));
}

/// A waiting job holds no slot, a signal wakes it, and signals arrive once, in order.
pub async fn signals_wake_waiting_jobs_in_order<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("shipper", |ctx: JobContext, _: ()| async move {
        let first: String = ctx.wait_for_signal("ship").await?;
        let second: String = ctx.wait_for_signal("ship").await?;
        Ok::<_, TaskError>(vec![first, second])
    });
    let id = q
        .enqueue("shipper", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&q, 1);
    assert_eq!(w.drain().await.expect("drain").suspended, 1);
    assert_eq!(job(&q, id).await.status, JobStatus::Waiting);
    q.signal(id, "ship", &"box-1").await.expect("signal");
    q.signal(id, "ship", &"box-2").await.expect("signal");
    let r = w.drain().await.expect("drain");
    assert_eq!(r.completed, 1);
    assert_eq!(job(&q, id).await.result, Some(json!(["box-1", "box-2"])));
    assert!(matches!(
        q.signal(id, "ship", &"late").await,
        Err(crate::Error::JobFinished { .. })
    ));
}

/// A signal wait with a timeout gives up at a deadline fixed on its first run.
pub async fn signal_timeout_gives_up_at_a_fixed_deadline<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("waiter", |ctx: JobContext, _: ()| async move {
        let got: Option<i32> = ctx
            .wait_for_signal_timeout("approve", Duration::from_secs(60))
            .await?;
        Ok::<_, TaskError>(got)
    });
    let id = q
        .enqueue("waiter", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&q, 1);
    w.drain().await.expect("drain");
    // A wake-up that brings no signal (another name) must not extend the deadline.
    q.signal(id, "unrelated", &1).await.expect("signal");
    w.drain().await.expect("drain");
    assert_eq!(job(&q, id).await.status, JobStatus::Waiting);
    h.advance(Duration::from_secs(61)).await;
    let mut done = w.drain().await.expect("drain").completed;
    for _ in 0..50 {
        if done > 0 {
            break;
        }
        h.advance(Duration::from_millis(100)).await;
        done = w.drain().await.expect("drain").completed;
    }
    assert_eq!(done, 1);
    assert_eq!(job(&q, id).await.result, Some(json!(null)));
    // Before the deadline a signal is returned.
    let id2 = q
        .enqueue("waiter", &(), JobOptions::new())
        .await
        .expect("enqueue");
    w.drain().await.expect("drain");
    q.signal(id2, "approve", &7).await.expect("signal");
    w.drain().await.expect("drain");
    assert_eq!(job(&q, id2).await.result, Some(json!(7)));
}

/// Peek looks without consuming; drain consumes what is there, checkpointed.
pub async fn peek_and_drain_signals<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("collector", |ctx: JobContext, _: ()| async move {
        let peeked: Option<i32> = ctx.peek_signal("n").await?;
        let all: Vec<i32> = ctx.drain_signals("n").await?;
        let none: Vec<i32> = ctx.drain_signals("n").await?;
        Ok::<_, TaskError>((peeked, all, none))
    });
    let id = q
        .enqueue(
            "collector",
            &(),
            JobOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .expect("enqueue");
    for n in [1, 2, 3] {
        q.signal(id, "n", &n).await.expect("signal");
    }
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(job(&q, id).await.result, Some(json!([1, [1, 2, 3], []])));
}

fn register_children(q: &Queue, runs: &Runs) {
    let r = runs.clone();
    q.register("square", move |_ctx: JobContext, n: i64| {
        let r = r.clone();
        async move {
            r.hit("square");
            if n < 0 {
                return Err(crate::NoRetry(format!("negative: {n}")).into());
            }
            Ok::<_, TaskError>(n * n)
        }
    });
}

/// Fan-out waits without a slot and fans in typed results in order.
pub async fn fan_out_collects_results_in_order<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register("parent", |ctx: JobContext, items: Vec<i64>| async move {
        let all = ctx
            .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::CollectAll)
            .await?;
        let one: i64 = ctx.join("square", &9, JobOptions::new()).await?;
        Ok::<_, TaskError>((all, one))
    });
    let id = q
        .enqueue("parent", &vec![3, -1, 2], JobOptions::new())
        .await
        .expect("enqueue");
    // One slot: the children can only run because the parent gave its slot back.
    let report = worker(&q, 1).drain().await.expect("drain");
    assert!(report.suspended >= 1);
    assert_eq!(job(&q, id).await.status, JobStatus::Completed);
    assert_eq!(
        job(&q, id).await.result,
        Some(json!([[{"Ok": 9}, {"Err": "negative: -1"}, {"Ok": 4}], 81]))
    );
    assert_eq!(runs.get("square"), 4, "no child ran twice");
}

/// Fail-fast fails the parent on the first failed child and cancels the rest.
pub async fn fan_out_fail_fast_cancels_the_rest<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register("parent", |ctx: JobContext, items: Vec<i64>| async move {
        let out = ctx
            .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::FailFast)
            .await?;
        Ok::<_, TaskError>(out.len())
    });
    // The failing child runs first (higher id order with equal priority: it is first).
    let id = q
        .enqueue("parent", &vec![-5, 1, 2], JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    let j = job(&q, id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.last_error.unwrap_or_default().contains("negative: -5"));
}

/// A threshold succeeds once enough children completed.
pub async fn fan_out_threshold<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register(
        "parent",
        |ctx: JobContext, (items, need): (Vec<i64>, usize)| async move {
            let out = ctx
                .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::Threshold(need))
                .await?;
            Ok::<_, TaskError>(out.iter().filter(|r| r.is_ok()).count())
        },
    );
    let ok = q
        .enqueue("parent", &(vec![1, -1, 2], 2), JobOptions::new())
        .await
        .expect("enqueue");
    let impossible = q
        .enqueue("parent", &(vec![-1, -2, 3], 2), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 2).drain().await.expect("drain");
    assert_eq!(job(&q, ok).await.result, Some(json!(2)));
    assert_eq!(job(&q, impossible).await.status, JobStatus::Failed);
}

/// A bundle tracks its jobs as one unit, reports once, and can delete them on success.
pub async fn bundles_report_when_done<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    let finished = Arc::new(Mutex::new(Vec::new()));
    let f = finished.clone();
    q.on_bundle_done(move |e| f.lock().expect("lock").push(e.clone()));
    let good = q
        .enqueue_bundle(
            vec![
                BundleItem::new("square", &2, JobOptions::new()),
                BundleItem::new("square", &3, JobOptions::new()),
            ],
            BundleOptions::new().delete_on_success(true),
        )
        .await
        .expect("bundle");
    let bad = q
        .enqueue_bundle(
            vec![
                BundleItem::new("square", &4, JobOptions::new()),
                BundleItem::new("square", &-4, JobOptions::new()),
            ],
            BundleOptions::new(),
        )
        .await
        .expect("bundle");
    let before = q.bundle_status(bad).await.expect("status");
    assert_eq!((before.total, before.unfinished), (2, 2));
    worker(&q, 2).drain().await.expect("drain");
    let good_status = q.bundle_status(good).await.expect("status");
    assert_eq!(good_status.status, JobStatus::Completed);
    assert_eq!(good_status.total, 0, "members deleted on success");
    let bad_status = q.bundle_status(bad).await.expect("status");
    assert_eq!(bad_status.status, JobStatus::Failed);
    assert_eq!((bad_status.completed, bad_status.failed), (1, 1));
    let mut got: Vec<(JobId, bool)> = finished
        .lock()
        .expect("lock")
        .iter()
        .map(|e| match e {
            Event::BundleFinished {
                bundle_id,
                succeeded,
                ..
            } => (*bundle_id, *succeeded),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(good, true), (bad, false)]);
}

/// Cancelling a parent cancels its children, and a running handler sees it.
pub async fn cancel_reaches_children_and_running_handlers<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("child", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    q.register("parent", |ctx: JobContext, _: ()| async move {
        ctx.fan_out::<(), _>(
            "child",
            vec![(), ()],
            JobOptions::new().delay(Duration::from_secs(3600)),
            FanOut::CollectAll,
        )
        .await?;
        Ok::<_, TaskError>(())
    });
    let parent = q
        .enqueue("parent", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(job(&q, parent).await.status, JobStatus::Waiting);
    assert!(q.cancel(parent).await.expect("cancel"));
    let kids = q
        .storage()
        .list_jobs(crate::JobFilter {
            parent_id: Some(parent),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(kids.len(), 2);
    assert!(kids.iter().all(|k| k.status == JobStatus::Cancelled));

    // A running handler learns of its cancellation through the context, while the
    // worker keeps running (so it is not the shutdown it sees).
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (saw_tx, saw_rx) = tokio::sync::oneshot::channel::<()>();
    let chans = Arc::new(Mutex::new(Some((started_tx, saw_tx))));
    q.register("long", move |ctx: JobContext, _: ()| {
        let chans = chans.clone();
        async move {
            let Some((started, saw)) = chans.lock().expect("lock").take() else {
                return Ok::<_, TaskError>("second run");
            };
            let _ = started.send(());
            ctx.cancelled().await;
            let _ = saw.send(());
            Ok::<_, TaskError>("saw cancellation")
        }
    });
    let id = q
        .enqueue("long", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new().heartbeat_interval(Duration::from_millis(20)),
    )
    .expect("options");
    let qc = q.clone();
    let report = w
        .run_until(async move {
            started_rx.await.expect("handler started");
            qc.cancel(id).await.expect("cancel running");
            tokio::time::timeout(Duration::from_secs(20), saw_rx)
                .await
                .expect("the handler saw its cancellation while the worker ran")
                .expect("handler reported");
        })
        .await
        .expect("run");
    assert_eq!(job(&q, id).await.status, JobStatus::Cancelled);
    assert_eq!(
        (report.completed, report.lost),
        (0, 1),
        "the late completion was fenced"
    );
}

/// An old run keeps the old branch; a new run takes the new one.
pub async fn versioning_keeps_old_runs_on_their_branch<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    q.register("step", move |_ctx: JobContext, name: String| {
        let r = r.clone();
        async move {
            r.hit(&name);
            Ok::<_, TaskError>(name)
        }
    });
    let new_code = Arc::new(AtomicBool::new(false));
    let nc = new_code.clone();
    q.register("flow", move |ctx: JobContext, _: ()| {
        let nc = nc.clone();
        async move {
            let mut out: Vec<String> = Vec::new();
            if nc.load(Ordering::SeqCst) {
                let v = ctx.version("add-audit", 1, 2).await?;
                out.push(call(&ctx, "step", &"a").await?);
                if v >= 2 {
                    out.push(call(&ctx, "step", &"audit").await?);
                }
            } else {
                out.push(call(&ctx, "step", &"a").await?);
            }
            ctx.sleep(Duration::from_secs(3600)).await?;
            Ok::<_, TaskError>(out)
        }
    });
    // An old run starts on the old code and sleeps.
    let old = q
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    // The code changes; a new run starts.
    new_code.store(true, Ordering::SeqCst);
    let new = q
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(runs.get("audit"), 1, "only the new run audits");
    // The old run replays under the new code and keeps its branch (no audit, same keys).
    q.signal(old, "nudge", &()).await.expect("wake");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(runs.get("audit"), 1);
    assert_eq!(runs.get("a"), 2);
    assert_eq!(job(&q, old).await.status, JobStatus::Waiting);
    assert_eq!(job(&q, new).await.status, JobStatus::Waiting);
}

/// Three schedulers racing over the same storage enqueue each tick exactly once.
pub async fn racing_schedulers_enqueue_each_tick_once<H: ConformanceHarness>(h: &H) {
    let queues: Vec<Queue> = (0..3).map(|_| queue(h)).collect();
    for q in &queues {
        q.register("tick", |_ctx: JobContext, _: ()| async {
            Ok::<_, TaskError>(())
        });
    }
    queues[0]
        .add_schedule(
            "every10",
            crate::Schedule::every(Duration::from_secs(10)).task("tick", &()),
        )
        .await
        .expect("add schedule");
    let base = queues[0].storage().now().await.expect("now");
    let mut total = 0;
    for k in 1..=5 {
        let now = base + chrono::Duration::seconds(10 * k);
        let passes = queues.iter().map(|q| {
            let q = q.clone();
            tokio::spawn(async move { q.run_schedules(now).await })
        });
        let mut this_tick = 0;
        for p in passes.collect::<Vec<_>>() {
            this_tick += p.await.expect("task").expect("pass").enqueued.len();
        }
        assert_eq!(this_tick, 1, "tick {k} enqueued {this_tick} times");
        total += this_tick;
    }
    let jobs = queues[0]
        .storage()
        .list_jobs(crate::JobFilter::default())
        .await
        .expect("list");
    assert_eq!((total, jobs.len()), (5, 5));
}

/// Missed ticks follow the catch-up rule: skip, one, or backfill within a window.
pub async fn missed_ticks_follow_the_catch_up_rule<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("tick", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    let every = |c| {
        crate::Schedule::every(Duration::from_secs(60))
            .task("tick", &())
            .catch_up(c)
    };
    q.add_schedule("skip", every(crate::CatchUp::Skip))
        .await
        .expect("add");
    q.add_schedule("one", every(crate::CatchUp::One))
        .await
        .expect("add");
    q.add_schedule(
        "backfill",
        every(crate::CatchUp::Backfill { window_secs: 300 }),
    )
    .await
    .expect("add");
    // Ticks fall on whole minutes: A is the first one after the schedules' cursor.
    let now = q.storage().now().await.expect("now");
    let a = chrono::DateTime::from_timestamp((now.timestamp() / 60 + 1) * 60, 0).expect("time");
    let at = |s: i64| a + chrono::Duration::seconds(s);
    // Ten missed ticks (A .. A+540), then a pass 30 seconds after the last one.
    let r = q.run_schedules(at(570)).await.expect("pass");
    let count = |name: &str| r.enqueued.iter().filter(|(n, _)| n == name).count();
    assert_eq!(
        count("skip"),
        1,
        "only the tick 30s ago is within the grace"
    );
    assert_eq!(count("one"), 1);
    assert_eq!(count("backfill"), 5, "ticks in the last 5 minutes");
    assert_eq!(r.skipped, 18, "skip and one passed over nine ticks each");
    // Nothing more until the next tick, then one each.
    assert!(q
        .run_schedules(at(575))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
    assert_eq!(
        q.run_schedules(at(610)).await.expect("pass").enqueued.len(),
        3
    );
}

/// No-overlap skips ticks while the previous run is unfinished; pause and resume work at
/// run time; bad schedules are refused when added.
pub async fn schedules_no_overlap_pause_and_validation<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("tick", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    let bad = q
        .add_schedule(
            "bad",
            crate::Schedule::cron("every tuesday").task("tick", &()),
        )
        .await;
    assert!(
        matches!(bad, Err(crate::Error::InvalidOption { .. })),
        "{bad:?}"
    );
    let unknown = q
        .add_schedule(
            "u",
            crate::Schedule::every(Duration::from_secs(1)).task("nope", &()),
        )
        .await;
    assert!(matches!(unknown, Err(crate::Error::UnknownTask(_))));
    q.add_schedule(
        "solo",
        crate::Schedule::every(Duration::from_secs(60))
            .task("tick", &())
            .no_overlap(true),
    )
    .await
    .expect("add");
    let base = q.storage().now().await.expect("now");
    let at = |s: i64| base + chrono::Duration::seconds(s);
    assert_eq!(
        q.run_schedules(at(61)).await.expect("pass").enqueued.len(),
        1
    );
    // The first run has not finished: the next tick is skipped.
    let r = q.run_schedules(at(121)).await.expect("pass");
    assert_eq!((r.enqueued.len(), r.skipped), (0, 1));
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(
        q.run_schedules(at(181)).await.expect("pass").enqueued.len(),
        1
    );
    assert!(q.pause_schedule("solo").await.expect("pause"));
    worker(&q, 1).drain().await.expect("drain");
    assert!(q
        .run_schedules(at(241))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
    assert!(q.resume_schedule("solo").await.expect("resume"));
    assert_eq!(
        q.run_schedules(at(245)).await.expect("pass").enqueued.len(),
        1
    );
    let info = q.schedules().await.expect("list");
    assert_eq!(info.len(), 1);
    assert!(info[0].next_tick.is_some_and(|t| t > at(245)));
    assert!(q.remove_schedule("solo").await.expect("remove"));
    assert!(q
        .run_schedules(at(400))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
}

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

/// A failed workflow retried by hand keeping its checkpoints resumes after its finished
/// steps; retried from scratch it starts over.
pub async fn retry_by_hand_keeps_or_drops_checkpoints<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    q.register("flow", move |ctx: JobContext, _: ()| {
        let r = r.clone();
        async move {
            let r1 = r.clone();
            ctx.step("first", move |_| async move {
                Ok::<_, TaskError>(r1.hit("first"))
            })
            .await?;
            if r.hit("gate") == 1 {
                return Err(crate::NoRetry("needs a human").into());
            }
            Ok::<_, TaskError>("done")
        }
    });
    let id = q
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(job(&q, id).await.status, JobStatus::Failed);
    assert_eq!(q.retry_jobs(&[id], true).await.expect("retry"), 1);
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(job(&q, id).await.status, JobStatus::Completed);
    assert_eq!(
        runs.get("first"),
        1,
        "kept checkpoints: the step did not run again"
    );
    let details = q.job_details(id).await.expect("details").expect("exists");
    assert_eq!(details.checkpoints.len(), 1);
}
