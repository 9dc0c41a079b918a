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

/// Claims the one due job, which must be `id`.
async fn claim_only(s: &DynStorage, id: crate::JobId) -> ClaimedJob {
    let mut got = claim(s, 10).await;
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [id],
        "only job {id} should be due"
    );
    got.remove(0)
}

/// A claim says a job holds no checkpoints (so the worker skips reading them) for a job
/// no attempt of which ever started, and never for one that holds some, whichever way its
/// earlier attempt ended: released at shutdown, snoozed, failed to retry, suspended,
/// lease expired, or cancelled and retried by hand keeping its checkpoints. The backends
/// shipped here all know it for a new job; `ClaimedJob::new` alone says false, which is
/// safe but reads every job's checkpoints.
pub async fn claims_say_no_checkpoints_only_for_jobs_that_hold_none<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let paths = [
        "release",
        "snooze",
        "retry",
        "suspend",
        "lease expired",
        "retried by hand",
    ];
    for path in paths {
        let mut job = NewJob::new("t", json!(path));
        job.max_attempts = 10;
        let id = s.enqueue(job).await.expect("enqueue").id;
        let first = claim_only(&s, id).await;
        assert!(
            first.no_checkpoints,
            "{path}: a new job's claim knows it holds no checkpoints"
        );
        let held = s.checkpoint_many(vec![write(&first, "0", CheckpointOutcome::Ok(json!(1)))]);
        assert!(held.await.expect("checkpoint_many")[0].is_ok());
        let lease = &first.lease;
        match path {
            "release" => s.release(lease).await.expect("release"),
            "snooze" => s.snooze(lease, Duration::ZERO).await.expect("snooze"),
            "retry" => s
                .fail(
                    lease,
                    crate::Failure {
                        error: "boom".into(),
                        retry_in: Some(Duration::ZERO),
                    },
                )
                .await
                .expect("fail"),
            "suspend" => {
                let now = s.now().await.expect("now");
                s.suspend(lease, Some(now)).await.expect("suspend");
            }
            "lease expired" => {
                h.advance(LEASE + Duration::from_secs(1)).await;
                s.release_stale_locks().await.expect("release_stale_locks");
            }
            _ => {
                assert!(s.cancel(id).await.expect("cancel"));
                assert_eq!(s.retry_jobs(&[id], true).await.expect("retry_jobs"), 1);
            }
        }
        let again = claim_only(&s, id).await;
        assert_eq!(
            stored(&s, &again).await.len(),
            1,
            "{path}: the checkpoint stays"
        );
        assert!(
            !again.no_checkpoints,
            "{path}: the claim must not say a job holding checkpoints holds none"
        );
        s.complete(&again.lease, json!(null))
            .await
            .expect("complete");
        assert_eq!(
            s.get_job(id).await.expect("get").map(|j| j.status),
            Some(JobStatus::Completed)
        );
    }
}

/// Counts the jobs whose checkpoints were read.
#[derive(Default)]
struct CheckpointReads {
    jobs: AtomicUsize,
}

impl crate::StorageLayer for CheckpointReads {
    fn on_call(&self, call: &crate::StorageCall<'_>) {
        if matches!(call.operation, "list_checkpoints" | "list_checkpoints_many") {
            self.jobs.fetch_add(call.items, Ordering::SeqCst);
        }
    }
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
/// from its checkpoint without running it again. Only the retries read checkpoints: the
/// first attempts' claims knew those jobs held none.
pub async fn concurrent_steps_are_stored_and_replayed<H: ConformanceHarness>(h: &H) {
    const JOBS: usize = 4;
    const STEPS: usize = 8;
    let reads = Arc::new(CheckpointReads::default());
    let q = Queue::with_layers(h.storage(), vec![reads.clone()]);
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
    assert_eq!(
        reads.jobs.load(Ordering::SeqCst),
        JOBS,
        "the second attempts read their checkpoints; the first, which the claim knew \
         held none, read nothing"
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
