//! Registration variants, enqueue validation and bad input.

use super::{setup, status, worker};
use durable_jobs::Storage;
use durable_jobs::{Error, JobContext, JobOptions, JobStatus, Task, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

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

#[tokio::test]
async fn every_registration_form_runs_and_stores_its_result() {
    let (queue, _clock) = setup();
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

#[tokio::test]
async fn unknown_task_is_a_typed_error_at_enqueue() {
    let (queue, _clock) = setup();
    queue.register_fn("known", |_: ()| async { Ok::<_, TaskError>(()) });
    let err = queue
        .enqueue("nope", &(), JobOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownTask(ref t) if t == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("no handler is registered"));
}

#[tokio::test]
async fn arguments_that_do_not_fit_are_refused_at_enqueue() {
    let (queue, _clock) = setup();
    queue.register_fn("takes_int", |_: i64| async { Ok::<_, TaskError>(()) });
    let err = queue
        .enqueue("takes_int", &"text", JobOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
    let err = queue
        .enqueue_many("takes_int", vec![json!(1), json!("x")], JobOptions::new())
        .await
        .unwrap_err();
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

#[tokio::test]
async fn invalid_options_are_typed_errors() {
    let (queue, _clock) = setup();
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let bad = [
        JobOptions::new().queue(""),
        JobOptions::new().queue("has space"),
        JobOptions::new().timeout(Duration::ZERO),
        JobOptions::new()
            .delay(Duration::from_secs(1))
            .at(chrono::Utc::now()),
        JobOptions::new().dedupe_key(""),
    ];
    for opts in bad {
        let err = queue.enqueue("t", &(), opts.clone()).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOption { .. } | Error::InvalidQueueName(_)
            ),
            "{opts:?} gave {err}"
        );
    }
}

#[tokio::test]
async fn payload_that_does_not_deserialize_fails_without_retry() {
    let (queue, _clock) = setup();
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

#[tokio::test]
async fn dedupe_key_returns_the_existing_job() {
    let (queue, _clock) = setup();
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

#[tokio::test]
async fn worker_options_are_validated() {
    let (queue, _clock) = setup();
    let no_handlers = durable_jobs::Worker::new(queue.clone(), durable_jobs::WorkerOptions::new());
    assert!(matches!(no_handlers, Err(Error::InvalidOption { .. })));
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let zero = durable_jobs::Worker::new(
        queue.clone(),
        durable_jobs::WorkerOptions::new().queue("q", 0),
    );
    assert!(matches!(
        zero,
        Err(Error::InvalidOption {
            option: "concurrency",
            ..
        })
    ));
    let hb = durable_jobs::WorkerOptions::new()
        .lease_duration(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_secs(2));
    assert!(durable_jobs::Worker::new(queue.clone(), hb).is_err());
    let dup = durable_jobs::WorkerOptions::new()
        .queue("q", 1)
        .queue("q", 2);
    assert!(durable_jobs::Worker::new(queue.clone(), dup).is_err());
    queue.register_fn("bad name!", |_: ()| async { Ok::<_, TaskError>(()) });
    assert!(durable_jobs::Worker::new(queue, durable_jobs::WorkerOptions::new()).is_err());
}
