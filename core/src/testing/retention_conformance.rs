//! Conformance cases for automatic retention: the storage's bounded purge batches
//! ([`crate::Storage::purge_retained`]) per final status, whole workflow trees, batches
//! racing from several callers, and a worker's retention pass through a real
//! [`crate::Queue`] and [`crate::Worker`]. The [`crate::conformance_tests`]
//! macro turns them into one test each. Time moves with the harness's `advance`.

use super::ConformanceHarness;
use crate::job::{Checkpoint, CheckpointOutcome, JobId, JobStatus, NewJob};
use crate::storage::{
    ClaimedJob, Completion, DequeueParams, DynStorage, Failure, RetentionBatch, RetentionPurged,
    SpawnChildrenParams,
};
use crate::{
    Event, JobContext, JobOptions, Queue, RetentionPolicy, TaskError, Worker, WorkerOptions,
};
use serde_json::json;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: Duration::from_secs(30),
        holder: "retention".into(),
        forbidden_flags: Vec::new(),
    }
}

/// Claims exactly the one due job, which must be `id`.
async fn claim(s: &DynStorage, id: JobId) -> ClaimedJob {
    let mut got = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [id],
        "only job {id} should be due"
    );
    got.remove(0)
}

/// A job that ran once and ended `status`, with a checkpoint and attempt history.
async fn finished(s: &DynStorage, status: JobStatus) -> JobId {
    let mut job = NewJob::new("t", json!(status.as_str()));
    job.max_attempts = 1;
    let id = s.enqueue(job).await.expect("enqueue").id;
    let c = claim(s, id).await;
    let cp = Checkpoint {
        key: "0".into(),
        name: "step".into(),
        outcome: CheckpointOutcome::Ok(json!(1)),
        created_at: None,
        args_hash: None,
    };
    s.checkpoint(&c.lease, cp).await.expect("checkpoint");
    match status {
        JobStatus::Completed => s.complete(&c.lease, json!("ok")).await.expect("complete"),
        JobStatus::Failed => s
            .fail(
                &c.lease,
                Failure {
                    error: "boom".into(),
                    retry_in: None,
                },
            )
            .await
            .expect("fail"),
        _ => assert!(s.cancel(id).await.expect("cancel")),
    }
    assert_eq!(status_of(s, id).await, Some(status));
    id
}

async fn status_of(s: &DynStorage, id: JobId) -> Option<JobStatus> {
    s.get_job(id).await.expect("get").map(|j| j.status)
}

/// Asserts the job is gone with its checkpoints and attempt history.
async fn gone(s: &DynStorage, id: JobId) {
    assert_eq!(status_of(s, id).await, None, "job {id} should be deleted");
    assert!(s.list_checkpoints(id).await.expect("cps").is_empty());
    assert!(s.list_attempts(id).await.expect("attempts").is_empty());
}

/// The batch for `policy` as of the storage's now.
async fn batch(s: &DynStorage, policy: RetentionPolicy, limit: usize) -> RetentionBatch {
    policy.batch(s.now().await.expect("now"), limit)
}

async fn purge(s: &DynStorage, b: RetentionBatch) -> RetentionPurged {
    let p = s.purge_retained(b).await.expect("purge_retained");
    assert!(!p.busy, "no other batch runs");
    p
}

/// Each final status goes after its own retention, checkpoints and attempt history
/// with it; a status without a retention stays; unfinished jobs are never touched.
pub async fn retention_deletes_each_status_after_its_own_retention<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let completed = finished(&s, JobStatus::Completed).await;
    let failed = finished(&s, JobStatus::Failed).await;
    let cancelled = finished(&s, JobStatus::Cancelled).await;
    let mut later = NewJob::new("t", json!("later"));
    later.delay = Some(30 * DAY);
    let pending = s.enqueue(later).await.expect("enqueue").id;
    h.advance(2 * DAY).await;
    let recent = finished(&s, JobStatus::Completed).await;

    let policy = RetentionPolicy::default();
    let none = purge(&s, batch(&s, RetentionPolicy::keep_forever(), 100).await).await;
    assert_eq!(
        none,
        RetentionPurged::default(),
        "keep_forever deletes nothing"
    );
    let only_failed = RetentionPolicy::keep_forever().failed(Some(DAY));
    let p = purge(&s, batch(&s, only_failed, 100).await).await;
    assert_eq!((p.roots, p.failed, p.jobs()), (1, 1, 1));
    gone(&s, failed).await;

    let failed = finished(&s, JobStatus::Failed).await;
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!(
        (p.roots, p.completed, p.failed, p.cancelled),
        (2, 1, 0, 1),
        "completed and cancelled after 1 day, the young failure stays"
    );
    gone(&s, completed).await;
    gone(&s, cancelled).await;
    assert_eq!(status_of(&s, recent).await, Some(JobStatus::Completed));
    assert_eq!(status_of(&s, failed).await, Some(JobStatus::Failed));
    assert_eq!(status_of(&s, pending).await, Some(JobStatus::Pending));

    h.advance(6 * DAY).await;
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!(
        (p.roots, p.completed, p.failed),
        (1, 1, 0),
        "failed kept 7 days"
    );
    assert_eq!(status_of(&s, failed).await, Some(JobStatus::Failed));
    h.advance(2 * DAY).await;
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!((p.roots, p.failed), (1, 1));
    gone(&s, failed).await;
    assert_eq!(status_of(&s, pending).await, Some(JobStatus::Pending));
}

/// A batch deletes at most its limit, oldest finish first, across statuses.
pub async fn retention_batches_are_bounded_and_oldest_first<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids = Vec::new();
    for status in [
        JobStatus::Cancelled,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Completed,
    ] {
        ids.push(finished(&s, status).await);
        h.advance(Duration::from_secs(10)).await;
    }
    h.advance(2 * DAY).await;
    let all = RetentionPolicy::default().failed(Some(DAY));
    let b = batch(&s, all, 3).await;
    let p = purge(&s, b).await;
    assert_eq!((p.roots, p.completed, p.failed, p.cancelled), (3, 1, 1, 1));
    for id in &ids[..3] {
        gone(&s, *id).await;
    }
    assert_eq!(status_of(&s, ids[3]).await, Some(JobStatus::Completed));
    let p = purge(&s, b).await;
    assert_eq!((p.roots, p.completed), (1, 1), "the rest, below the limit");
    let p = purge(&s, b).await;
    assert_eq!(p, RetentionPurged::default());
}

/// Enqueues `n` jobs of task `t` in the default queue, claims them in one batch and
/// completes them together, at the storage's now; returns their ids in claim order.
/// Public for backend-specific retention tests that need finished jobs to purge.
pub async fn completed_together(s: &DynStorage, n: usize) -> Vec<JobId> {
    let jobs = (0..n).map(|i| NewJob::new("t", json!(i))).collect();
    s.enqueue_many(jobs).await.expect("enqueue_many");
    let claimed = s.dequeue(params(n)).await.expect("dequeue");
    assert_eq!(claimed.len(), n, "all {n} jobs are due");
    let ids = claimed.iter().map(|c| c.job.id).collect();
    let items = claimed
        .into_iter()
        .map(|c| Completion {
            lease: c.lease,
            result: json!("ok"),
        })
        .collect();
    for r in s.complete_many(items).await.expect("complete_many") {
        r.expect("complete");
    }
    ids
}

/// A batch larger than any step a backend splits it into (SQLite purges in steps of
/// 100 trees) still deletes exactly its limit, oldest first, and counts every job.
pub async fn large_retention_batches_delete_exactly_their_limit<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let older = completed_together(&s, 130).await;
    h.advance(Duration::from_secs(10)).await;
    let newer = completed_together(&s, 150).await;
    h.advance(2 * DAY).await;
    let b = batch(&s, RetentionPolicy::default(), 250).await;
    let p = purge(&s, b).await;
    assert_eq!((p.roots, p.completed, p.jobs()), (250, 250, 250));
    for id in &older {
        assert_eq!(status_of(&s, *id).await, None, "older job {id} goes first");
    }
    let mut left = Vec::new();
    for id in &newer {
        if status_of(&s, *id).await.is_some() {
            left.push(*id);
        }
    }
    assert_eq!(left.len(), 30, "the batch stopped at its limit");
    let p = purge(&s, b).await;
    assert_eq!(
        (p.roots, p.completed),
        (30, 30),
        "the rest, below the limit"
    );
    for id in left {
        gone(&s, id).await;
    }
    assert_eq!(purge(&s, b).await, RetentionPurged::default());
}

/// Children go with their root, never before it: finished children of a live root stay;
/// a finished root with an unfinished descendant stays whole; once the whole tree is
/// finished and the root is past its retention, the tree goes in one batch. A child
/// whose root was deleted by hand is a root of its own.
pub async fn retention_takes_children_with_their_root<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let root = s
        .enqueue(NewJob::new("t", json!("root")))
        .await
        .expect("enqueue")
        .id;
    let c = claim(&s, root).await;
    let kids = s
        .spawn_children(SpawnChildrenParams {
            lease: &c.lease,
            key: "0",
            name: "kids",
            jobs: vec![NewJob::new("t", json!(1)), NewJob::new("t", json!(2))],
        })
        .await
        .expect("spawn");
    s.suspend(&c.lease, None).await.expect("suspend");
    let mut claimed = s.dequeue(params(10)).await.expect("dequeue");
    claimed.sort_by_key(|c| c.job.id);
    assert_eq!(claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(), kids);
    for k in &claimed {
        s.complete(&k.lease, json!("kid")).await.expect("complete");
    }
    h.advance(2 * DAY).await;
    let policy = RetentionPolicy::default();
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!(
        p.jobs(),
        0,
        "the root still runs: its finished children stay"
    );
    for k in &kids {
        assert_eq!(status_of(&s, *k).await, Some(JobStatus::Completed));
    }

    let c = claim(&s, root).await;
    s.complete(&c.lease, json!("done")).await.expect("complete");
    // A second tree whose root finished before its child.
    let early = s
        .enqueue(NewJob::new("t", json!("early")))
        .await
        .expect("enqueue")
        .id;
    let c = claim(&s, early).await;
    let late_kid = s
        .spawn_children(SpawnChildrenParams {
            lease: &c.lease,
            key: "0",
            name: "kid",
            jobs: vec![NewJob::new("t", json!("late"))],
        })
        .await
        .expect("spawn")[0];
    s.complete(&c.lease, json!("done")).await.expect("complete");
    h.advance(2 * DAY).await;
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!(
        (p.roots, p.completed),
        (1, 3),
        "the first tree goes whole; the second has an unfinished child"
    );
    gone(&s, root).await;
    for k in &kids {
        gone(&s, *k).await;
    }
    assert_eq!(status_of(&s, early).await, Some(JobStatus::Completed));
    let c = claim(&s, late_kid).await;
    s.complete(&c.lease, json!("late")).await.expect("complete");
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!(
        (p.roots, p.completed),
        (1, 2),
        "the root's retention rules its tree"
    );
    gone(&s, early).await;
    gone(&s, late_kid).await;

    // An orphan: its parent was deleted by hand.
    let parent = s
        .enqueue(NewJob::new("t", json!("parent")))
        .await
        .expect("enqueue")
        .id;
    let c = claim(&s, parent).await;
    let orphan = s
        .spawn_children(SpawnChildrenParams {
            lease: &c.lease,
            key: "0",
            name: "kid",
            jobs: vec![NewJob::new("t", json!("orphan"))],
        })
        .await
        .expect("spawn")[0];
    s.suspend(&c.lease, None).await.expect("suspend");
    let c = claim(&s, orphan).await;
    s.complete(&c.lease, json!("orphan"))
        .await
        .expect("complete");
    assert!(s.delete_job(parent).await.expect("delete"));
    h.advance(2 * DAY).await;
    let p = purge(&s, batch(&s, policy, 100).await).await;
    assert_eq!((p.roots, p.completed), (1, 1));
    gone(&s, orphan).await;
}

/// A failed job retried by hand leaves retention until it finishes again, and then goes
/// by its new finish time, not its first: retention never deletes a job that is back in
/// line, and never one that finished recently.
pub async fn retention_goes_by_the_latest_finish_of_a_job_retried_by_hand<H: ConformanceHarness>(
    h: &H,
) {
    let s = h.storage();
    let job = finished(&s, JobStatus::Failed).await;
    h.advance(2 * DAY).await;
    assert_eq!(s.retry_jobs(&[job], false).await.expect("retry"), 1);
    assert_eq!(status_of(&s, job).await, Some(JobStatus::Pending));
    let failed_after_a_day = RetentionPolicy::keep_forever().failed(Some(DAY));
    let p = purge(&s, batch(&s, failed_after_a_day, 100).await).await;
    assert_eq!(p, RetentionPurged::default(), "a job back in line stays");
    assert_eq!(
        s.purge_finished(s.now().await.expect("now"))
            .await
            .expect("purge_finished"),
        0,
        "purge_finished leaves it too"
    );

    // It runs again and fails for good: kept a day from this finish.
    let c = claim(&s, job).await;
    s.fail(
        &c.lease,
        Failure {
            error: "boom again".into(),
            retry_in: None,
        },
    )
    .await
    .expect("fail");
    h.advance(DAY / 2).await;
    let p = purge(&s, batch(&s, failed_after_a_day, 100).await).await;
    assert_eq!(
        p,
        RetentionPurged::default(),
        "half a day after its last finish"
    );
    assert_eq!(status_of(&s, job).await, Some(JobStatus::Failed));
    h.advance(DAY).await;
    let p = purge(&s, batch(&s, failed_after_a_day, 100).await).await;
    assert_eq!((p.roots, p.failed), (1, 1));
    gone(&s, job).await;
}

/// Batches racing from several callers delete every due job exactly once; a caller that
/// meets the lock held is told so and deletes nothing.
pub async fn racing_retention_batches_delete_each_job_once<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(finished(&s, JobStatus::Completed).await);
    }
    h.advance(2 * DAY).await;
    let b = batch(&s, RetentionPolicy::default(), 5).await;
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut deleted = 0;
                loop {
                    let p = s.purge_retained(b).await.expect("purge_retained");
                    if p.busy {
                        assert_eq!(p.jobs(), 0, "a busy batch deletes nothing");
                        tokio::task::yield_now().await;
                        continue;
                    }
                    deleted += p.jobs();
                    if p.roots < 5 {
                        return deleted;
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for r in racers {
        total += r.await.expect("racer");
    }
    assert_eq!(total, 24, "each job deleted once");
    for id in ids {
        gone(&s, id).await;
    }
}

/// A worker runs the retention pass with its policy: `keep_forever` keeps everything;
/// the default deletes jobs finished more than a day ago, counts them in an event, and
/// keeps the recent ones.
pub async fn worker_purges_by_its_policy<H: ConformanceHarness>(h: &H) {
    let q = Queue::new(h.storage());
    q.register("t", |_ctx: JobContext, _: i64| async {
        Ok::<_, TaskError>(())
    });
    let old = [
        q.enqueue("t", &1, JobOptions::default())
            .await
            .expect("enqueue"),
        q.enqueue("t", &2, JobOptions::default())
            .await
            .expect("enqueue"),
    ];
    let opts = || {
        WorkerOptions::new()
            .scheduler(false)
            .metrics_interval(Duration::ZERO)
    };
    let keep =
        Worker::new(q.clone(), opts().retention(RetentionPolicy::keep_forever())).expect("worker");
    assert_eq!(keep.drain().await.expect("drain").completed, 2);
    h.advance(2 * DAY).await;
    keep.drain().await.expect("drain");
    for id in old {
        assert!(q.get_job(id).await.expect("get").is_some());
    }
    let recent = q
        .enqueue("t", &3, JobOptions::default())
        .await
        .expect("enqueue");
    let mut events = q.events();
    let purging = Worker::new(q.clone(), opts()).expect("worker");
    assert_eq!(purging.drain().await.expect("drain").completed, 1);
    let purged = tokio::time::timeout(
        Duration::from_secs(30),
        events.wait_for(|e| matches!(e, Event::JobsPurged { .. })),
    )
    .await
    .expect("a purge event within 30 s");
    assert_eq!(
        purged,
        Some(Event::JobsPurged {
            completed: 2,
            failed: 0,
            cancelled: 0
        })
    );
    for id in old {
        assert!(q.get_job(id).await.expect("get").is_none());
    }
    assert_eq!(
        q.get_job(recent).await.expect("get").map(|j| j.status),
        Some(JobStatus::Completed)
    );
}
