//! Conformance for group-committed checkpoints: [`crate::Storage::checkpoint_many`] on its
//! own (each item fenced by its own lease in a mixed batch), and concurrent steps of
//! several jobs through a real worker, whose checkpoints share writes. The
//! [`crate::conformance_tests`] macro turns them into one test each.

use super::ConformanceHarness;
use crate::job::{Checkpoint, CheckpointOutcome, JobStatus, NewJob};
use crate::storage::{CheckpointWrite, ClaimedJob, DequeueParams, DynStorage, Storage};
use crate::{Error, JobContext, JobOptions, Queue, RetryPolicy, TaskError, Worker, WorkerOptions};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

async fn claim(s: &DynStorage, limit: usize) -> Vec<ClaimedJob> {
    s.dequeue(DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: LEASE,
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    })
    .await
    .expect("dequeue")
}

fn write(c: &ClaimedJob, key: &str, outcome: CheckpointOutcome) -> CheckpointWrite {
    CheckpointWrite {
        lease: c.lease.clone(),
        checkpoint: Checkpoint {
            key: key.into(),
            name: format!("step {key}"),
            outcome,
            created_at: None,
            args_hash: None,
        },
    }
}

async fn stored(s: &DynStorage, c: &ClaimedJob) -> HashMap<String, CheckpointOutcome> {
    let list = s
        .list_checkpoints(c.job.id)
        .await
        .expect("list_checkpoints");
    for cp in &list {
        assert!(cp.created_at.is_some(), "created_at is set by storage");
        assert_eq!(cp.name, format!("step {}", cp.key));
    }
    list.into_iter().map(|cp| (cp.key, cp.outcome)).collect()
}

/// One batch mixing held leases, a stale lease (its job reclaimed and claimed again), a
/// finished job's lease and a key written twice: each item is fenced on its own, a lost
/// lease stores nothing for its items, and a repeated key keeps the last value.
pub async fn checkpoint_many_fences_each_item<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    assert!(s
        .checkpoint_many(Vec::new())
        .await
        .expect("empty")
        .is_empty());
    for i in 0..2 {
        s.enqueue(NewJob::new("t", json!(i)))
            .await
            .expect("enqueue");
    }
    let mut first = claim(&s, 2).await;
    assert_eq!(first.len(), 2);
    let b_old = first.remove(1);
    let a_stale = first.remove(0);
    // Both leases expire; both jobs are claimed again under new leases.
    h.advance(LEASE + Duration::from_secs(1)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 2);
    let mut second = claim(&s, 2).await;
    assert_eq!(second.len(), 2);
    let b = second.remove(1);
    let a = second.remove(0);
    assert_eq!((a.job.id, b.job.id), (a_stale.job.id, b_old.job.id));
    // A third job, finished before the batch: its lease is no longer current.
    s.enqueue(NewJob::new("t", json!(3)))
        .await
        .expect("enqueue");
    let done = claim(&s, 1).await.remove(0);
    s.complete(&done.lease, json!("done"))
        .await
        .expect("complete");

    let ok = |v: &str| CheckpointOutcome::Ok(json!(v));
    let batch = vec![
        write(&a, "0", ok("a0 first")),
        write(&b_old, "0", ok("stale b0")),
        write(&b, "0", ok("b0")),
        write(&a, "1", CheckpointOutcome::Err("a1 failed for good".into())),
        write(&done, "0", ok("too late")),
        write(&a_stale, "2", ok("stale a2")),
        write(&a, "0", ok("a0 last")),
    ];
    let results = s.checkpoint_many(batch).await.expect("checkpoint_many");
    let lost: Vec<bool> = results
        .iter()
        .map(|r| match r {
            Ok(()) => false,
            Err(Error::LeaseLost { .. }) => true,
            Err(e) => panic!("expected Ok or LeaseLost, got {e:?}"),
        })
        .collect();
    assert_eq!(lost, [false, true, false, false, true, true, false]);
    let got_a = stored(&s, &a).await;
    assert_eq!(got_a.len(), 2, "{got_a:?}");
    assert_eq!(got_a["0"], ok("a0 last"));
    assert_eq!(
        got_a["1"],
        CheckpointOutcome::Err("a1 failed for good".into())
    );
    let got_b = stored(&s, &b).await;
    assert_eq!(got_b.len(), 1, "{got_b:?}");
    assert_eq!(got_b["0"], ok("b0"));
    assert!(stored(&s, &done).await.is_empty());
    // The held jobs are still running under their leases.
    for c in [&a, &b] {
        let j = s.get_job(c.job.id).await.expect("get").expect("exists");
        assert_eq!(j.status, JobStatus::Running);
    }
}

/// Concurrent steps of several jobs (their checkpoints group-committed by the worker)
/// are all stored, each under its own job and key; the retry replays every one of them
/// from its checkpoint without running it again.
pub async fn concurrent_steps_are_stored_and_replayed<H: ConformanceHarness>(h: &H) {
    const JOBS: usize = 4;
    const STEPS: usize = 8;
    let q = Queue::new(h.storage());
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    q.register("fan", move |ctx: JobContext, base: usize| {
        let r = r.clone();
        async move {
            // Every step is started before any is awaited, so their checkpoints are in
            // flight together (with the other jobs' steps).
            let handles: Vec<_> = (0..STEPS)
                .map(|i| {
                    let r = r.clone();
                    tokio::spawn(ctx.step(&format!("s{i}"), move |_| async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, TaskError>(base + i)
                    }))
                })
                .collect();
            let mut sum = 0;
            for (i, handle) in handles.into_iter().enumerate() {
                let got: usize = handle
                    .await
                    .map_err(|e| TaskError::retry(e.to_string()))??;
                assert_eq!(got, base + i, "step {i} of job {base}");
                sum += got;
            }
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("crash after the steps"));
            }
            Ok::<_, TaskError>(sum)
        }
    });
    let mut ids = Vec::new();
    for j in 0..JOBS {
        let id = q
            .enqueue("fan", &(j * 100), JobOptions::new())
            .await
            .expect("enqueue");
        ids.push((id, j * 100));
    }
    let worker = Worker::new(q.clone(), WorkerOptions::new().queue("default", JOBS))
        .expect("worker options");
    let report = worker.drain().await.expect("drain");
    assert_eq!(
        (report.retried, report.completed),
        (JOBS as u64, JOBS as u64)
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        JOBS * STEPS,
        "no step ran twice"
    );
    for (id, base) in ids {
        let job = q.get_job(id).await.expect("get").expect("exists");
        let sum: usize = (0..STEPS).map(|i| base + i).sum();
        assert_eq!(job.result, Some(json!(sum)));
        let cps = q.storage().list_checkpoints(id).await.expect("checkpoints");
        assert_eq!(cps.len(), STEPS);
        for cp in cps {
            let i: usize = cp.key.parse().expect("top-level key");
            assert_eq!(cp.name, format!("s{i}"));
            assert_eq!(cp.outcome, CheckpointOutcome::Ok(json!(base + i)));
        }
    }
}
