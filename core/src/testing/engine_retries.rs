//! Engine conformance for retries: backoff with jitter, `NoRetry`, `RetryAfter`, per-task
//! policies, and retrying failed jobs by hand.

use super::support::{job, plain_queue, queue, status, worker, Runs};
use super::ConformanceHarness;
use crate::{
    Event, JobContext, JobOptions, JobStatus, NoRetry, RetryAfter, RetryPolicy, TaskError,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
/// Retries back off exponentially (no jitter here), are not due a second early, and the
/// job fails for good once its attempts are spent.
pub async fn retries_back_off_exponentially_then_fail_for_good<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.set_default_retry_policy(
        RetryPolicy::exponential(Duration::from_secs(10), Duration::from_secs(3600))
            .with_jitter(0.0),
    );
    queue.register_fn("flaky", |_: ()| async {
        Err::<(), _>(TaskError::retry("still broken"))
    });
    let id = queue
        .enqueue("flaky", &(), JobOptions::new().retries(3))
        .await
        .expect("enqueue");
    let mut events = queue.events();
    let w = worker(&queue, 1);
    let mut delays = Vec::new();
    for _ in 0..3 {
        assert_eq!(w.drain().await.expect("drain").retried, 1);
        match events
            .wait_for(|e| matches!(e, Event::Retrying { .. }))
            .await
        {
            Some(Event::Retrying { retry_in, .. }) => delays.push(retry_in.as_secs()),
            other => panic!("expected a retry event, got {other:?}"),
        }
        assert_eq!(status(&queue, id).await, JobStatus::Retrying);
        // Not yet due five seconds before the delay ends (the margin covers the real time
        // that also passes on a database clock).
        h.advance(Duration::from_secs(delays[delays.len() - 1] - 5))
            .await;
        assert_eq!(w.drain().await.expect("drain").retried, 0);
        h.advance(Duration::from_secs(5)).await;
    }
    assert_eq!(delays, vec![10, 20, 40]);
    assert_eq!(w.drain().await.expect("drain").failed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 4));
    assert_eq!(job.last_error.as_deref(), Some("still broken"));
}

/// The default backoff spreads retries with jitter within its bounds.
pub async fn default_backoff_has_jitter_within_bounds<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("flaky", |_: ()| async {
        Err::<(), _>(TaskError::retry("no"))
    });
    let mut events = queue.events();
    for _ in 0..20 {
        queue
            .enqueue("flaky", &(), JobOptions::new())
            .await
            .expect("enqueue");
    }
    assert_eq!(worker(&queue, 20).drain().await.expect("drain").retried, 20);
    let mut delays = Vec::new();
    while delays.len() < 20 {
        if let Some(Event::Retrying { retry_in, .. }) = events
            .wait_for(|e| matches!(e, Event::Retrying { .. }))
            .await
        {
            delays.push(retry_in);
        }
    }
    assert!(
        delays
            .iter()
            .all(|d| *d >= Duration::from_millis(750) && *d <= Duration::from_millis(1250)),
        "{delays:?}"
    );
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "jitter spreads retries"
    );
}

/// `NoRetry` fails the job at once, whatever attempts remain.
pub async fn no_retry_fails_at_once<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("fatal", |_: ()| async {
        Err::<(), TaskError>(NoRetry("card declined").into())
    });
    let id = queue
        .enqueue("fatal", &(), JobOptions::new().retries(10))
        .await
        .expect("enqueue");
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").failed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!((job.status, job.attempt), (JobStatus::Failed, 1));
    assert_eq!(job.last_error.as_deref(), Some("card declined"));
}

/// `RetryAfter` sets the delay before the next attempt.
pub async fn retry_after_sets_the_delay<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    queue.register_fn("limited", move |_: ()| {
        let c = c.clone();
        async move {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err::<(), TaskError>(
                    RetryAfter(Duration::from_secs(90), "rate limited").into(),
                );
            }
            Ok(())
        }
    });
    let id = queue
        .enqueue("limited", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    // Ten seconds short: the margin covers the real time that also passes on a database
    // clock.
    h.advance(Duration::from_secs(80)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 0);
    h.advance(Duration::from_secs(10)).await;
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    assert_eq!(status(&queue, id).await, JobStatus::Completed);
}

/// A per-task retry policy replaces the default.
pub async fn a_per_task_policy_replaces_the_default<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("quick", |_: ()| async {
        Err::<(), _>(TaskError::retry("x"))
    });
    queue.set_retry_policy(
        "quick",
        RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(2)).with_jitter(0.0),
    );
    let id = queue
        .enqueue("quick", &(), JobOptions::new().retries(1))
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    w.drain().await.expect("drain");
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(w.drain().await.expect("drain").failed, 1);
    assert_eq!(status(&queue, id).await, JobStatus::Failed);
}

/// A standard error returned with `?` is a retryable failure carrying its message.
pub async fn std_errors_convert_with_question_mark_and_retry<H: ConformanceHarness>(h: &H) {
    let queue = plain_queue(h);
    queue.register_fn("parse", |s: String| async move {
        let n: i64 = s.parse()?;
        Ok::<_, TaskError>(n)
    });
    let id = queue
        .enqueue("parse", &"not a number", JobOptions::new())
        .await
        .expect("enqueue");
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").retried, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert!(job
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("invalid digit"));
}

/// A failed workflow retried by hand keeping its checkpoints resumes after its finished
/// steps; retried from scratch it starts over, its step running again.
pub async fn retry_by_hand_keeps_or_drops_checkpoints<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    let r = runs.clone();
    // The step of each job counts its runs per job; the job fails for good (needing a
    // human) on its first pass after the step, and completes on its second.
    q.register("flow", move |ctx: JobContext, name: String| {
        let r = r.clone();
        async move {
            let (r1, step) = (r.clone(), format!("{name}:step"));
            ctx.step("first", move |_| async move {
                Ok::<_, TaskError>(r1.hit(&step))
            })
            .await?;
            if r.hit(&format!("{name}:gate")) == 1 {
                return Err(crate::NoRetry("needs a human").into());
            }
            Ok::<_, TaskError>("done")
        }
    });
    let mut ids = Vec::new();
    for name in ["keep", "drop"] {
        ids.push(
            q.enqueue("flow", &name, JobOptions::new())
                .await
                .expect("enqueue"),
        );
    }
    let (keep, drop) = (ids[0], ids[1]);
    worker(&q, 1).drain().await.expect("drain");
    for &id in &ids {
        assert_eq!(job(&q, id).await.status, JobStatus::Failed);
    }
    assert_eq!(q.retry_jobs(&[keep], true).await.expect("retry"), 1);
    assert_eq!(q.retry_jobs(&[drop], false).await.expect("retry"), 1);
    let dropped = q.job_details(drop).await.expect("details").expect("exists");
    assert!(
        dropped.checkpoints.is_empty(),
        "retried from scratch: no checkpoint left"
    );
    worker(&q, 1).drain().await.expect("drain");
    for &id in &ids {
        assert_eq!(job(&q, id).await.status, JobStatus::Completed);
    }
    assert_eq!(
        runs.get("keep:step"),
        1,
        "kept checkpoints: the step did not run again"
    );
    assert_eq!(
        runs.get("drop:step"),
        2,
        "dropped checkpoints: the step ran again"
    );
    for id in ids {
        let details = q.job_details(id).await.expect("details").expect("exists");
        assert_eq!(details.checkpoints.len(), 1);
    }
}
