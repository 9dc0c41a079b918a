//! Progress: what a running handler reports ([`crate::JobContext::progress`]), stored on
//! the job, fenced by the lease, and sent as an event. The
//! [`crate::conformance_tests`] macro turns these cases into one test each.

use super::ConformanceHarness;
use crate::job::NewJob;
use crate::storage::DequeueParams;
use crate::{Error, Event, JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
use serde_json::json;
use std::time::Duration;

/// The storage's `set_progress`: replaces the last value, is fenced, and stays on the
/// finished job.
pub async fn progress_is_stored_fenced_and_kept<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = s
        .enqueue(NewJob::new("t", json!("x")))
        .await
        .expect("enqueue")
        .id;
    assert_eq!(
        s.get_job(id).await.expect("get").expect("job").progress,
        None
    );
    let params = DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit: 1,
        lease_duration: Duration::from_secs(30),
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    };
    let c = s.dequeue(params.clone()).await.expect("dequeue").remove(0);
    s.set_progress(&c.lease, json!(10)).await.expect("progress");
    s.set_progress(&c.lease, json!({"done": 3, "of": 4}))
        .await
        .expect("progress");
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.progress, Some(json!({"done": 3, "of": 4})));
    // Listings return it too.
    let listed = s
        .list_jobs(crate::JobFilter::default())
        .await
        .expect("list");
    assert_eq!(listed[0].progress, Some(json!({"done": 3, "of": 4})));
    s.complete(&c.lease, json!("ok")).await.expect("complete");
    // A stale lease cannot overwrite it.
    match s.set_progress(&c.lease, json!(99)).await {
        Err(Error::LeaseLost { job_id }) => assert_eq!(job_id, id),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.progress, Some(json!({"done": 3, "of": 4})));
}

/// A handler's reports are events in order, and the last one is in the job's details.
pub async fn handler_progress_is_an_event_and_in_job_details<H: ConformanceHarness>(h: &H) {
    let q = Queue::new(h.storage());
    q.register("import", |ctx: JobContext, rows: u32| async move {
        for done in 1..=rows {
            ctx.progress(&json!({ "done": done, "of": rows })).await?;
        }
        Ok::<_, TaskError>(rows)
    });
    let mut events = q.events();
    let id = q
        .enqueue("import", &3u32, JobOptions::new())
        .await
        .expect("enqueue");
    Worker::new(q.clone(), WorkerOptions::new().queue("default", 1))
        .expect("worker")
        .drain()
        .await
        .expect("drain");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match events
            .wait_for(|e| matches!(e, Event::Progress { .. }))
            .await
        {
            Some(Event::Progress {
                job_id,
                task,
                attempt,
                progress,
            }) => {
                assert_eq!((job_id, task.as_str(), attempt), (id, "import", 1));
                seen.push(progress);
            }
            other => panic!("expected a progress event, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            json!({"done": 1, "of": 3}),
            json!({"done": 2, "of": 3}),
            json!({"done": 3, "of": 3})
        ]
    );
    let details = q.job_details(id).await.expect("details").expect("job");
    assert_eq!(details.job.progress, Some(json!({"done": 3, "of": 3})));
    assert_eq!(details.job.result, Some(json!(3)));
}
