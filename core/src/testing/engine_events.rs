//! Engine conformance for hooks and the event stream: what each outcome reports, in what
//! order, and what a lagging subscriber learns.

use super::support::{plain_queue, worker};
use super::ConformanceHarness;
use crate::{Event, EventStreamError, JobOptions, NoRetry, TaskError};
use std::sync::{Arc, Mutex};

/// Hooks see each start, completion, retry and failure, with the job they concern.
pub async fn hooks_see_start_complete_retry_and_fail<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = |tag: &'static str| {
        let seen = seen.clone();
        move |e: &Event| {
            seen.lock()
                .expect("lock")
                .push((tag, e.job_id().unwrap_or_default()))
        }
    };
    queue.on_job_start(log("start"));
    queue.on_job_complete(log("complete"));
    queue.on_retry(log("retry"));
    queue.on_job_fail(log("fail"));
    queue.register_fn("ok", |_: ()| async { Ok::<_, TaskError>(()) });
    queue.register_fn("retry", |_: ()| async {
        Err::<(), _>(TaskError::retry("r"))
    });
    queue.register_fn("fatal", |_: ()| async {
        Err::<(), TaskError>(NoRetry("f").into())
    });
    let ok = queue
        .enqueue("ok", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let retry = queue
        .enqueue("retry", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let fatal = queue
        .enqueue("fatal", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&queue, 1).drain().await.expect("drain");
    let mut got = seen.lock().expect("lock").clone();
    got.sort();
    let mut want = vec![
        ("complete", ok),
        ("fail", fatal),
        ("retry", retry),
        ("start", ok),
        ("start", retry),
        ("start", fatal),
    ];
    want.sort();
    assert_eq!(got, want);
}

/// The event stream reports a worker start, a job's start and completion, and the worker
/// stop, in that order.
pub async fn the_event_stream_reports_each_step_in_order<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("t", |n: i32| async move { Ok::<_, TaskError>(n * 10) });
    let mut events = queue.events();
    let id = queue
        .enqueue("t", &4, JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    assert_eq!(
        events.recv().await,
        Ok(Event::WorkerStarted {
            worker: w.name().to_string()
        })
    );
    assert_eq!(
        events.recv().await,
        Ok(Event::Started {
            job_id: id,
            task: "t".into(),
            attempt: 1
        })
    );
    assert_eq!(
        events.recv().await,
        Ok(Event::Completed {
            job_id: id,
            task: "t".into(),
            attempt: 1,
            result: serde_json::json!(40)
        })
    );
    assert_eq!(
        events.recv().await,
        Ok(Event::WorkerStopped {
            worker: w.name().to_string()
        })
    );
}

/// A subscriber that falls behind the event buffer learns how many events it missed, and
/// the stream goes on.
pub async fn a_slow_subscriber_learns_it_missed_events<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("t", |_: ()| async { Ok::<_, TaskError>(()) });
    let mut events = queue.events();
    let n = crate::event::DEFAULT_EVENT_CAPACITY;
    queue
        .enqueue_many("t", std::iter::repeat_n((), n), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&queue, 50).drain().await.expect("drain");
    // 2n job events and the worker's started and stopped were sent into a buffer of n
    // without reading.
    match events.recv().await {
        Err(EventStreamError::Missed(missed)) => assert_eq!(missed, n as u64 + 2),
        other => panic!("expected a missed-events notice, got {other:?}"),
    }
    assert!(
        events.recv().await.is_ok(),
        "the stream continues after the notice"
    );
}
