//! Engine conformance for waiting workflows: sleeps and signal waits hold no slot and
//! resume on time or on a signal, on any worker.

use super::support::{job, queue, worker, Runs};
use super::ConformanceHarness;
use crate::{JobContext, JobOptions, JobStatus, TaskError};
use serde_json::json;
use std::time::Duration;

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
