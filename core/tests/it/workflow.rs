//! Durable calls: checkpointed results, replay on retry, nesting, determinism.

use super::{setup, worker};
use durable_jobs::Storage;
use durable_jobs::{call, JobContext, JobOptions, JobStatus, NoRetry, TaskError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts how many times each named step ran.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    fn hit(&self, name: &str) {
        *self.0.lock().expect("lock").entry(name.into()).or_default() += 1;
    }
    fn get(&self, name: &str) -> u32 {
        self.0.lock().expect("lock").get(name).copied().unwrap_or(0)
    }
}

fn register_step(queue: &durable_jobs::Queue, name: &'static str, runs: &Runs) {
    let runs = runs.clone();
    queue.register(name, move |_ctx: JobContext, n: i64| {
        let runs = runs.clone();
        async move {
            runs.hit(name);
            Ok::<_, TaskError>(n + 1)
        }
    });
}

#[tokio::test]
async fn a_retried_workflow_runs_only_the_unfinished_calls() {
    let (queue, clock) = setup();
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
    clock.advance(Duration::from_secs(3600));
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

#[tokio::test]
async fn nested_calls_two_levels_deep_replay_correctly() {
    let (queue, clock) = setup();
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
    clock.advance(Duration::from_secs(3600));
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

#[tokio::test]
async fn a_partly_finished_nested_call_resumes_inside_itself() {
    let (queue, clock) = setup();
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
    clock.advance(Duration::from_secs(3600));
    w.drain().await.expect("drain");
    assert_eq!(
        runs.get("leaf"),
        2,
        "the first leaf replayed from its checkpoint"
    );
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(2)));
}

#[tokio::test]
async fn a_replay_that_meets_another_name_is_a_non_determinism_error() {
    let (queue, clock) = setup();
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
    clock.advance(Duration::from_secs(3600));
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

#[tokio::test]
async fn terminal_call_errors_are_checkpointed_and_retryable_ones_are_not() {
    let (queue, clock) = setup();
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
    clock.advance(Duration::from_secs(3600));
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

#[tokio::test]
async fn calling_an_unknown_task_fails_the_job_clearly() {
    let (queue, _clock) = setup();
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
