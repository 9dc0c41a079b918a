//! Snooze: a handler outcome that runs the job again later without spending an attempt,
//! up to a per-task limit. The [`crate::conformance_tests`] macro turns these
//! cases into one test each.

use super::ConformanceHarness;
use crate::job::{JobStatus, NewJob};
use crate::storage::{AttemptOutcome, ClaimedJob, DequeueParams, DynStorage, Storage};
use crate::{
    Error, Event, JobContext, JobOptions, Queue, RetryPolicy, Snooze, TaskError, Worker,
    WorkerOptions,
};
use serde_json::json;
use std::time::Duration;

fn params() -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit: 1,
        lease_duration: Duration::from_secs(30),
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    }
}

async fn claim(s: &DynStorage) -> Vec<ClaimedJob> {
    s.dequeue(params()).await.expect("dequeue")
}

fn queue<H: ConformanceHarness>(h: &H) -> Queue {
    let q = Queue::new(h.storage());
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    q
}

fn worker(q: &Queue) -> Worker {
    Worker::new(q.clone(), WorkerOptions::new().queue("default", 1)).expect("worker")
}

/// The storage's snooze: fenced, the attempt given back, the job due only after the
/// delay, and the attempt recorded as `snoozed`.
pub async fn snooze_reschedules_without_spending_an_attempt<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut new = NewJob::new("t", json!("x"));
    new.max_attempts = 1;
    let id = s.enqueue(new).await.expect("enqueue").id;
    let first = claim(&s).await.remove(0);
    s.snooze(&first.lease, Duration::from_secs(600))
        .await
        .expect("snooze");
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!((job.status, job.attempt), (JobStatus::Pending, 0));
    assert!(job.lease.is_none());
    assert!(
        claim(&s).await.is_empty(),
        "claimable before the delay passed"
    );
    // The lease is spent: a second snooze, or a completion, is fenced.
    match s.snooze(&first.lease, Duration::ZERO).await {
        Err(Error::LeaseLost { job_id }) => assert_eq!(job_id, id),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert!(s.complete(&first.lease, json!(1)).await.is_err());
    h.advance(Duration::from_secs(601)).await;
    let second = claim(&s).await.remove(0);
    // Its only attempt is still there to run.
    assert_eq!((second.job.attempt, second.lease.attempt), (1, 1));
    let history = s.list_attempts(id).await.expect("attempts");
    let outcomes: Vec<AttemptOutcome> = history.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Snoozed, AttemptOutcome::Running]
    );
    assert_eq!(history[0].attempt, 1);
    s.complete(&second.lease, json!(1)).await.expect("complete");

    // After a failed attempt, a snooze goes back to retrying, as a release does.
    let id = s
        .enqueue(NewJob::new("t", json!("y")))
        .await
        .expect("enqueue")
        .id;
    let c = claim(&s).await.remove(0);
    let failure = crate::storage::Failure {
        error: "boom".into(),
        retry_in: Some(Duration::ZERO),
    };
    s.fail(&c.lease, failure).await.expect("fail");
    let c = claim(&s).await.remove(0);
    assert_eq!(c.lease.attempt, 2);
    s.snooze(&c.lease, Duration::ZERO).await.expect("snooze");
    let job = s.get_job(id).await.expect("get").expect("job");
    assert_eq!((job.status, job.attempt), (JobStatus::Retrying, 1));
    assert_eq!(job.last_error.as_deref(), Some("boom"));
}

/// A handler that snoozes twice, then completes, completes on a job allowed a single
/// attempt; each snooze is an event and a `snoozed` attempt in its history.
pub async fn snoozing_handler_runs_again_with_its_attempts_intact<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("poll_upstream", |ctx: JobContext, _: ()| async move {
        let runs = ctx.job().attempt;
        let snoozed = ctx
            .queue()
            .storage()
            .list_attempts(ctx.job_id())
            .await
            .map_err(TaskError::from_engine)?
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Snoozed)
            .count();
        if snoozed < 2 {
            return Err(Snooze(Duration::ZERO).into());
        }
        Ok::<_, TaskError>(json!({ "attempt": runs, "snoozed": snoozed }))
    });
    let mut events = q.events();
    let id = q
        .enqueue("poll_upstream", &(), JobOptions::new().retries(0))
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!(
        (report.snoozed, report.completed, report.retried),
        (2, 1, 0)
    );
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(json!({ "attempt": 1, "snoozed": 2 })));
    let outcomes: Vec<AttemptOutcome> = q
        .storage()
        .list_attempts(id)
        .await
        .expect("attempts")
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            AttemptOutcome::Snoozed,
            AttemptOutcome::Snoozed,
            AttemptOutcome::Completed
        ]
    );
    let snoozed = events
        .wait_for(|e| matches!(e, Event::Snoozed { job_id, .. } if *job_id == id))
        .await;
    assert!(
        matches!(snoozed, Some(Event::Snoozed { attempt: 1, delay, .. }) if delay == Duration::ZERO)
    );
}

/// Past the task's snooze limit the job fails for good, with an error that says so.
pub async fn snooze_limit_fails_the_job<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("always_early", |_ctx: JobContext, _: ()| async move {
        Err::<(), TaskError>(Snooze(Duration::ZERO).into())
    });
    q.set_max_snoozes("always_early", 3);
    assert_eq!(q.max_snoozes("always_early"), 3);
    assert_eq!(q.max_snoozes("other"), crate::DEFAULT_MAX_SNOOZES);
    let id = q
        .enqueue("always_early", &(), JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    let report = worker(&q).drain().await.expect("drain");
    assert_eq!((report.snoozed, report.failed), (3, 1));
    match q.wait_for::<()>(id, Duration::from_secs(60)).await {
        Err(Error::JobFailed { error, .. }) => {
            assert!(error.contains("snoozed 3 times"), "{error}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    let job = q.get_job(id).await.expect("get").expect("job");
    // The snoozes spent none of its six attempts; the failure ended it anyway.
    assert_eq!(job.attempt, 1);
}
