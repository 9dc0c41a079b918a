//! Determinism of call arguments: a checkpointed call stores a hash of its arguments,
//! and a replay with other arguments is reported, strictly or as a warning per task.
//! The [`crate::conformance_tests`] macro turns these cases into one test
//! each.

use super::ConformanceHarness;
use crate::job::{Checkpoint, CheckpointOutcome, NewJob};
use crate::storage::{DequeueParams, Storage};
use crate::{
    call, Determinism, Event, JobContext, JobOptions, JobStatus, Queue, RetryPolicy, TaskError,
    Worker, WorkerOptions,
};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn queue<H: ConformanceHarness>(h: &H) -> (Queue, Arc<AtomicU32>) {
    let q = Queue::new(h.storage());
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    let charges = Arc::new(AtomicU32::new(0));
    let c = charges.clone();
    q.register("charge", move |_ctx: JobContext, cents: u64| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(format!("charged {cents}"))
        }
    });
    // The first attempt charges 1299 and crashes; the retry asks for 1300: its code or
    // inputs changed under the running workflow.
    q.register("checkout", |ctx: JobContext, _: ()| async move {
        let cents: u64 = if ctx.attempt() == 1 { 1299 } else { 1300 };
        let receipt: String = call(&ctx, "charge", &cents).await?;
        if ctx.attempt() == 1 {
            return Err(TaskError::retry("crash after the charge"));
        }
        Ok::<_, TaskError>(receipt)
    });
    (q, charges)
}

async fn run(q: &Queue) {
    Worker::new(q.clone(), WorkerOptions::new().queue("default", 1))
        .expect("worker")
        .drain()
        .await
        .expect("drain");
}

/// Storage keeps a checkpoint's argument hash, and a checkpoint without one stays without.
pub async fn argument_hashes_roundtrip_with_checkpoints<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(null)))
        .await
        .expect("enqueue")
        .id;
    let params = DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit: 1,
        lease_duration: Duration::from_secs(30),
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    };
    let c = s.dequeue(params).await.expect("dequeue").remove(0);
    for (key, hash) in [("0", Some("fnv1a64:00000000000004d3")), ("1", None)] {
        let cp = Checkpoint {
            key: key.into(),
            name: "charge".into(),
            outcome: CheckpointOutcome::Ok(json!(key)),
            created_at: None,
            args_hash: hash.map(String::from),
        };
        s.checkpoint(&c.lease, cp).await.expect("checkpoint");
    }
    let hashes: Vec<Option<String>> = s
        .list_checkpoints(id)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.args_hash)
        .collect();
    assert_eq!(
        hashes,
        vec![Some("fnv1a64:00000000000004d3".to_string()), None]
    );
}

/// Under the default (strict), the replay fails the job at once with a non-determinism
/// error naming the call, without running the call again, and sends an event.
pub async fn changed_arguments_fail_a_strict_replay<H: ConformanceHarness>(h: &H) {
    let (q, charges) = queue(h);
    assert_eq!(q.determinism("checkout"), Determinism::Strict);
    let mut events = q.events();
    let id = q
        .enqueue("checkout", &(), JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    run(&q).await;
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempt, 2, "non-determinism is not retried");
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("non-determinism") && error.contains("`charge`"),
        "{error}"
    );
    assert_eq!(charges.load(Ordering::SeqCst), 1);
    let event = events
        .wait_for(|e| matches!(e, Event::NonDeterminism { .. }))
        .await;
    assert!(
        matches!(&event, Some(Event::NonDeterminism { job_id, key, name, .. })
            if *job_id == id && key == "0" && name == "charge"),
        "{event:?}"
    );
}

/// Under `Warn`, the replay sends the event and returns the stored result.
pub async fn changed_arguments_warn_and_keep_the_stored_result<H: ConformanceHarness>(h: &H) {
    let (q, charges) = queue(h);
    q.set_determinism("checkout", Determinism::Warn);
    let mut events = q.events();
    let id = q
        .enqueue("checkout", &(), JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    run(&q).await;
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(json!("charged 1299")));
    assert_eq!(charges.load(Ordering::SeqCst), 1);
    let event = events
        .wait_for(|e| matches!(e, Event::NonDeterminism { .. }))
        .await;
    assert!(matches!(event, Some(Event::NonDeterminism { job_id, .. }) if job_id == id));
}

/// A checkpoint written before arguments were hashed (no hash) replays whatever the
/// arguments, and the same arguments always replay.
pub async fn checkpoints_without_a_hash_are_not_checked<H: ConformanceHarness>(h: &H) {
    let (q, charges) = queue(h);
    // The first attempt writes the call's checkpoint as an older version did: no hash.
    q.register("legacy_checkout", |ctx: JobContext, _: ()| async move {
        if ctx.attempt() == 1 {
            let old = Checkpoint {
                key: "0".into(),
                name: "charge".into(),
                outcome: CheckpointOutcome::Ok(json!("charged 1299")),
                created_at: None,
                args_hash: None,
            };
            ctx.queue()
                .storage()
                .checkpoint(ctx.lease(), old)
                .await
                .map_err(TaskError::from_engine)?;
            return Err(TaskError::retry("crash after the charge"));
        }
        let receipt: String = call(&ctx, "charge", &1300u64).await?;
        // Same arguments at a new position: recorded, then replayed on the next attempt.
        let again: String = call(&ctx, "charge", &7u64).await?;
        if ctx.attempt() == 2 {
            return Err(TaskError::retry("crash after the second charge"));
        }
        Ok::<_, TaskError>(format!("{receipt}, {again}"))
    });
    let id = q
        .enqueue("legacy_checkout", &(), JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    run(&q).await;
    let job = q.get_job(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.last_error);
    assert_eq!(job.result, Some(json!("charged 1299, charged 7")));
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "only the second call ran"
    );
    let stored = q.storage().list_checkpoints(id).await.expect("list");
    assert_eq!(stored[0].args_hash, None);
    assert!(stored[1]
        .args_hash
        .as_deref()
        .is_some_and(|h| h.starts_with("fnv1a64:")));
}
