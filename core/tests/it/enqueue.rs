//! Validation that needs no storage: unknown tasks, bad job options and bad worker
//! options are typed errors before anything is written. (Everything that runs jobs is in
//! the engine conformance suite, on every backend.)

use super::setup;
use durable_jobs::{Error, JobOptions, TaskError};
use std::time::Duration;

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
