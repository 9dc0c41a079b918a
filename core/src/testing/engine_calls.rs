//! Engine conformance for durable calls and steps: results checkpointed once, replay
//! on retry (nested scopes included), non-determinism caught, versioned branches kept.

use super::support::{job, plain_queue, queue, worker, Runs};
use super::ConformanceHarness;
use crate::storage::Storage;
use crate::{call, JobContext, JobOptions, JobStatus, NoRetry, Queue, TaskError};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Registers `name` as a call that counts its runs and returns its argument plus one.
fn register_step(queue: &Queue, name: &'static str, runs: &Runs) {
    let runs = runs.clone();
    queue.register(name, move |_ctx: JobContext, n: i64| {
        let runs = runs.clone();
        async move {
            runs.hit(name);
            Ok::<_, TaskError>(n + 1)
        }
    });
}

/// A retried workflow runs only the calls that did not finish, and keeps one checkpoint
/// per call, keyed by position.
pub async fn a_retried_workflow_runs_only_the_unfinished_calls<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    let runs = Runs::default();
    for s in ["one", "two", "three"] {
        register_step(&queue, s, &runs);
    }
    let fail_once = Arc::new(AtomicBool::new(true));
    let f = fail_once.clone();
    queue.register("flow", move |ctx: JobContext, start: i64| {
        let f = f.clone();
        async move {
            let a: i64 = call(&ctx, "one", &start).await?;
            let b: i64 = call(&ctx, "two", &a).await?;
            if f.swap(false, Ordering::SeqCst) {
                return Err(TaskError::retry("crash between two and three"));
            }
            let c: i64 = ctx.call("three", &b).await?;
            Ok(c)
        }
    });
    let id = queue
        .enqueue("flow", &10, JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    assert_eq!(w.drain().await.expect("drain").retried, 1);
    assert_eq!(
        (runs.get("one"), runs.get("two"), runs.get("three")),
        (1, 1, 0)
    );
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(
        (runs.get("one"), runs.get("two"), runs.get("three")),
        (1, 1, 1)
    );
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(13)));
    let keys: Vec<String> = queue
        .storage()
        .list_checkpoints(id)
        .await
        .expect("cps")
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert_eq!(keys, vec!["0", "1", "2"]);
}

/// Calls nested two levels deep get hierarchical keys and replay without re-running.
pub async fn nested_calls_two_levels_deep_replay_correctly<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    let runs = Runs::default();
    register_step(&queue, "leaf", &runs);
    let r = runs.clone();
    queue.register("middle", move |ctx: JobContext, n: i64| {
        let r = r.clone();
        async move {
            r.hit("middle");
            let a: i64 = call(&ctx, "leaf", &n).await?;
            let b: i64 = call(&ctx, "leaf", &(a * 10)).await?;
            Ok::<_, TaskError>(a + b)
        }
    });
    let fail_once = Arc::new(AtomicBool::new(true));
    let f = fail_once.clone();
    queue.register("top", move |ctx: JobContext, _: ()| {
        let f = f.clone();
        async move {
            let x: i64 = call(&ctx, "middle", &1).await?;
            let y: i64 = call(&ctx, "leaf", &x).await?;
            let z: i64 = call(&ctx, "middle", &y).await?;
            if f.swap(false, Ordering::SeqCst) {
                return Err(TaskError::retry("crash after the second middle"));
            }
            Ok::<_, TaskError>(vec![x, y, z])
        }
    });
    let id = queue
        .enqueue("top", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    let first = (runs.get("middle"), runs.get("leaf"));
    assert_eq!(first, (2, 5));
    let mut keys: Vec<String> = queue
        .storage()
        .list_checkpoints(id)
        .await
        .expect("cps")
        .into_iter()
        .map(|c| c.key)
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["0", "0/0", "0/1", "1", "2", "2/0", "2/1"]);
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(
        (runs.get("middle"), runs.get("leaf")),
        first,
        "nothing re-ran"
    );
    // middle(1) = leaf(1)=2 + leaf(20)=21 -> 23; leaf(23)=24; middle(24) = 25 + 251 = 276
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!([23, 24, 276])));
}

/// A nested call that failed part-way resumes inside itself: its finished inner call
/// replays from its checkpoint.
pub async fn a_partly_finished_nested_call_resumes_inside_itself<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    let runs = Runs::default();
    register_step(&queue, "leaf", &runs);
    let fail_once = Arc::new(AtomicBool::new(true));
    let f = fail_once.clone();
    queue.register("middle", move |ctx: JobContext, n: i64| {
        let f = f.clone();
        async move {
            let a: i64 = call(&ctx, "leaf", &n).await?;
            if f.swap(false, Ordering::SeqCst) {
                return Err(TaskError::retry("crash inside middle"));
            }
            let b: i64 = call(&ctx, "leaf", &a).await?;
            Ok::<_, TaskError>(b)
        }
    });
    queue.register("top", |ctx: JobContext, _: ()| async move {
        let v: i64 = call(&ctx, "middle", &0).await?;
        Ok::<_, TaskError>(v)
    });
    let id = queue
        .enqueue("top", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    assert_eq!(runs.get("leaf"), 1);
    h.advance(Duration::from_secs(3600)).await;
    w.drain().await.expect("drain");
    assert_eq!(
        runs.get("leaf"),
        2,
        "the first leaf replayed from its checkpoint"
    );
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(2)));
}

/// A replay that meets another call name at a checkpointed position fails the job with a
/// non-determinism error naming both, and runs nothing.
pub async fn a_replay_that_meets_another_name_is_a_non_determinism_error<H: ConformanceHarness>(
    h: &H,
) {
    let queue = plain_queue(h);
    let runs = Runs::default();
    register_step(&queue, "a", &runs);
    register_step(&queue, "b", &runs);
    let first = Arc::new(AtomicBool::new(true));
    let f = first.clone();
    queue.register("flow", move |ctx: JobContext, _: ()| {
        let f = f.clone();
        async move {
            if f.swap(false, Ordering::SeqCst) {
                let _: i64 = call(&ctx, "a", &0).await?;
                return Err(TaskError::retry("retry"));
            }
            // The code changed between attempts: position 0 now calls `b`.
            let _: i64 = call(&ctx, "b", &0).await?;
            Ok::<_, TaskError>(())
        }
    });
    let id = queue
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(w.drain().await.expect("drain").failed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Failed);
    let err = job.last_error.expect("error");
    assert!(
        err.contains("non-determinism") && err.contains("`a`") && err.contains("`b`"),
        "{err}"
    );
    assert_eq!(runs.get("b"), 0);
}

/// A call's terminal error is checkpointed and replayed; a retryable one runs again.
pub async fn terminal_call_errors_are_checkpointed_and_retryable_ones_are_not<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let queue = plain_queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    queue.register("declines", move |_ctx: JobContext, _: ()| {
        let r = r.clone();
        async move {
            r.hit("declines");
            Err::<(), TaskError>(NoRetry("declined").into())
        }
    });
    let r = runs.clone();
    queue.register("flaky", move |_ctx: JobContext, _: ()| {
        let r = r.clone();
        async move {
            r.hit("flaky");
            if r.get("flaky") < 2 {
                return Err(TaskError::retry("flaky"));
            }
            Ok::<_, TaskError>("ok")
        }
    });
    queue.register("flow", |ctx: JobContext, _: ()| async move {
        // The workflow handles the terminal error and goes on.
        let declined = call::<(), _>(&ctx, "declines", &()).await.is_err();
        let flaky: String = call(&ctx, "flaky", &()).await?;
        Ok::<_, TaskError>((declined, flaky))
    });
    let id = queue
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    assert_eq!(w.drain().await.expect("drain").retried, 1);
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(
        runs.get("declines"),
        1,
        "terminal error replayed from its checkpoint"
    );
    assert_eq!(runs.get("flaky"), 2, "retryable error was not checkpointed");
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!([true, "ok"])));
}

/// Calling a task nobody registered fails the job, naming the task.
pub async fn calling_an_unknown_task_fails_the_job_clearly<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register("flow", |ctx: JobContext, _: ()| async move {
        call::<(), _>(&ctx, "missing", &()).await?;
        Ok::<_, TaskError>(())
    });
    let id = queue
        .enqueue("flow", &(), JobOptions::new())
        .await
        .expect("enqueue");
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").failed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert!(job
        .last_error
        .unwrap_or_default()
        .contains("unknown task `missing`"));
}
