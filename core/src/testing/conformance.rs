//! The storage conformance cases. Each takes a harness holding a fresh storage; the
//! [`crate::conformance_tests`] macro turns them into one test each.

use super::ConformanceHarness;
use crate::job::{Checkpoint, CheckpointOutcome, JobId, JobStatus, NewJob};
use crate::storage::{ClaimedJob, Completion, DequeueParams, DynStorage, Failure, JobFilter};
use crate::Error;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: LEASE,
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    }
}

fn job(payload: serde_json::Value) -> NewJob {
    NewJob::new("t", payload)
}

async fn enqueue(s: &DynStorage, j: NewJob) -> JobId {
    s.enqueue(j).await.expect("enqueue").id
}

async fn claim_one(s: &DynStorage) -> ClaimedJob {
    let mut got = s.dequeue(params(1)).await.expect("dequeue");
    assert_eq!(got.len(), 1, "expected one claimable job");
    got.remove(0)
}

async fn status(s: &DynStorage, id: JobId) -> JobStatus {
    s.get_job(id)
        .await
        .expect("get_job")
        .expect("job exists")
        .status
}

fn assert_lease_lost<T: std::fmt::Debug>(r: crate::Result<T>) {
    match r {
        Err(Error::LeaseLost { .. }) => {}
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// Jobs are claimed by priority (higher first), then run_at, then id.
pub async fn claims_by_priority_then_run_at_then_id<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let now = s.now().await.expect("now");
    let secs = |n: i64| now - chrono::Duration::seconds(n);
    let mut ids = Vec::new();
    for (prio, age) in [(0, 10), (5, 1), (0, 20), (5, 5), (0, 20)] {
        let mut j = job(json!({ "prio": prio, "age": age }));
        j.priority = prio;
        j.run_at = Some(secs(age));
        ids.push(enqueue(&s, j).await);
    }
    let got: Vec<JobId> = s
        .dequeue(params(10))
        .await
        .expect("dequeue")
        .iter()
        .map(|c| c.job.id)
        .collect();
    // prio 5 (older first), then prio 0: the two age-20 jobs by id, then age 10.
    assert_eq!(got, vec![ids[3], ids[1], ids[2], ids[4], ids[0]]);
    let again = s.dequeue(params(10)).await.expect("dequeue again");
    assert!(again.is_empty(), "claimed twice: {again:?}");
}

/// A delayed job is not claimable before its run_at, and is once time passes it.
pub async fn delayed_job_invisible_until_due<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut j = job(json!("later"));
    j.delay = Some(Duration::from_secs(3600));
    let id = enqueue(&s, j).await;
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    h.advance(Duration::from_secs(1800)).await;
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    h.advance(Duration::from_secs(1801)).await;
    let c = claim_one(&s).await;
    assert_eq!(c.job.id, id);
    assert_eq!(c.job.status, JobStatus::Running);
    assert_eq!(c.job.attempt, 1);
    assert_eq!(c.lease.attempt, 1);
}

/// Only the requested queues and task names are claimed.
pub async fn dequeue_filters_queues_and_tasks<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut other_queue = job(json!(1));
    other_queue.queue = "other".into();
    let other_queue = enqueue(&s, other_queue).await;
    let other_task = enqueue(&s, NewJob::new("u", json!(2))).await;
    let mine = enqueue(&s, job(json!(3))).await;
    let got = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(got.iter().map(|c| c.job.id).collect::<Vec<_>>(), vec![mine]);
    let mut p = params(10);
    p.queues = vec!["other".into(), "default".into()];
    p.tasks = vec!["t".into(), "u".into()];
    let mut got: Vec<JobId> = s
        .dequeue(p)
        .await
        .expect("dequeue")
        .iter()
        .map(|c| c.job.id)
        .collect();
    got.sort();
    assert_eq!(got, vec![other_queue, other_task]);
}

/// A claim naming several queues takes their due jobs in claim order across them
/// (priority, then run_at, then id, whichever queue holds each) up to its limit, passes
/// over paused queues and jobs not yet due, and lets a serial key shared by the queues
/// start only its first job in that order.
pub async fn a_claim_of_several_queues_keeps_claim_order_across_them<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let now = s.now().await.expect("now");
    // (queue, priority, seconds since due: negative is not yet due, serial key)
    let spec: [(&str, i32, i64, Option<&str>); 10] = [
        ("a", 0, 10, None),
        ("b", 5, 1, None),
        ("c", 0, 30, None),
        ("b", 0, 20, None),
        ("a", 5, 5, None),
        ("c", 9, -60, None),
        ("held", 9, 50, None),
        ("a", 1, 1, None),
        ("b", 0, 40, Some("k")),
        ("a", 0, 35, Some("k")),
    ];
    let mut ids = Vec::new();
    for (queue, priority, age, key) in spec {
        let mut j = job(json!({ "queue": queue, "priority": priority, "age": age }));
        j.queue = queue.into();
        j.priority = priority;
        j.run_at = Some(now - chrono::Duration::seconds(age));
        j.serial_key = key.map(str::to_string);
        ids.push(enqueue(&s, j).await);
    }
    s.set_queue_paused("held", true).await.expect("pause");
    let claim = |limit: usize| {
        let s = s.clone();
        async move {
            let mut p = params(limit);
            p.queues = vec!["a".into(), "b".into(), "c".into(), "held".into()];
            s.dequeue(p).await.expect("dequeue")
        }
    };
    let id_list = |got: &[ClaimedJob]| got.iter().map(|c| c.job.id).collect::<Vec<JobId>>();
    // Priority 5 (older first), then 1, then the first of priority 0: the key's first
    // job, due 40 s ago in queue b.
    let first = claim(4).await;
    assert_eq!(id_list(&first), vec![ids[4], ids[1], ids[7], ids[8]]);
    // The rest of priority 0 by age, without the key's second job (its key is busy),
    // the job not yet due or the paused queue's.
    assert_eq!(id_list(&claim(10).await), vec![ids[2], ids[3], ids[0]]);
    assert!(claim(10).await.is_empty());
    // The key's first job finishes: its second, in another queue, comes next.
    s.complete(&first[3].lease, json!(null))
        .await
        .expect("complete");
    assert_eq!(id_list(&claim(10).await), vec![ids[9]]);
}

/// Many concurrent dequeuers never claim one job twice, and claim every job.
pub async fn concurrent_dequeuers_never_claim_a_job_twice<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let n = 300;
    s.enqueue_many((0..n).map(|i| job(json!(i))).collect())
        .await
        .expect("enqueue_many");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.dequeue(params(7)).await.expect("dequeue");
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|c| c.job.id));
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("dequeuer task") {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), n);
}

/// Completing stores the result and finishes the job.
pub async fn complete_stores_result<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = enqueue(&s, job(json!({"x": 1}))).await;
    let c = claim_one(&s).await;
    s.complete(&c.lease, json!({"answer": 42}))
        .await
        .expect("complete");
    let j = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.result, Some(json!({"answer": 42})));
    assert!(j.completed_at.is_some());
    assert!(j.lease.is_none());
    assert_eq!(j.payload, json!({"x": 1}));
    // Completing twice is refused: the lease ended with the first completion.
    assert_lease_lost(s.complete(&c.lease, json!(0)).await);
}

/// A batch completion fences each item by itself.
pub async fn complete_many_fences_each_item<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    for i in 0..3 {
        enqueue(&s, job(json!(i))).await;
    }
    let claimed = s.dequeue(params(3)).await.expect("dequeue");
    assert_eq!(claimed.len(), 3);
    assert!(s.cancel(claimed[1].job.id).await.expect("cancel"));
    let out = s
        .complete_many(
            claimed
                .iter()
                .map(|c| Completion {
                    lease: c.lease.clone(),
                    result: json!(c.job.id),
                })
                .collect(),
        )
        .await
        .expect("complete_many");
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok() && out[2].is_ok());
    assert!(matches!(out[1], Err(Error::LeaseLost { .. })));
    assert_eq!(status(&s, claimed[0].job.id).await, JobStatus::Completed);
    assert_eq!(status(&s, claimed[1].job.id).await, JobStatus::Cancelled);
    assert_eq!(status(&s, claimed[2].job.id).await, JobStatus::Completed);
}

/// Claims a job, lets its lease expire, reclaims and claims it again: returns both claims.
async fn reclaimed<H: ConformanceHarness>(h: &H) -> (DynStorage, ClaimedJob, ClaimedJob) {
    let s = h.storage();
    enqueue(&s, job(json!("x"))).await;
    let first = claim_one(&s).await;
    h.advance(LEASE + Duration::from_secs(1)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 1);
    let second = claim_one(&s).await;
    assert_eq!(second.job.id, first.job.id);
    assert_ne!(second.lease.token, first.lease.token);
    assert_eq!(second.lease.attempt, 2);
    (s, first, second)
}

/// After a reclaim, the old lease's complete is refused and changes nothing.
pub async fn stale_lease_cannot_complete<H: ConformanceHarness>(h: &H) {
    let (s, old, new) = reclaimed(h).await;
    assert_lease_lost(s.complete(&old.lease, json!("stale")).await);
    let j = s.get_job(new.job.id).await.expect("get").expect("exists");
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.result, None);
    s.complete(&new.lease, json!("fresh"))
        .await
        .expect("current lease completes");
    assert_lease_lost(s.complete(&old.lease, json!("stale")).await);
    let j = s.get_job(new.job.id).await.expect("get").expect("exists");
    assert_eq!(j.result, Some(json!("fresh")));
}

/// After a reclaim, the old lease's fail is refused and changes nothing.
pub async fn stale_lease_cannot_fail<H: ConformanceHarness>(h: &H) {
    let (s, old, new) = reclaimed(h).await;
    let f = Failure {
        error: "stale".into(),
        retry_in: None,
    };
    assert_lease_lost(s.fail(&old.lease, f.clone()).await);
    assert_lease_lost(s.release(&old.lease).await);
    let j = s.get_job(new.job.id).await.expect("get").expect("exists");
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.attempt, 2);
    assert_ne!(j.last_error.as_deref(), Some("stale"));
}

/// After a reclaim, the old lease cannot be renewed.
pub async fn stale_lease_cannot_heartbeat<H: ConformanceHarness>(h: &H) {
    let (s, old, new) = reclaimed(h).await;
    assert_lease_lost(s.heartbeat(&old.lease, LEASE).await);
    let renewed = s
        .heartbeat(&new.lease, LEASE)
        .await
        .expect("current lease renews");
    assert_eq!(renewed.token, new.lease.token);
}

/// After a reclaim, the old lease cannot write checkpoints.
pub async fn stale_lease_cannot_checkpoint<H: ConformanceHarness>(h: &H) {
    let (s, old, new) = reclaimed(h).await;
    let cp = Checkpoint {
        key: "0".into(),
        name: "step".into(),
        outcome: CheckpointOutcome::Ok(json!("stale")),
        created_at: None,
        args_hash: None,
    };
    assert_lease_lost(s.checkpoint(&old.lease, cp).await);
    assert!(s
        .list_checkpoints(new.job.id)
        .await
        .expect("checkpoints")
        .is_empty());
}

/// A running job whose lease expired goes back to be claimed, with its error noted.
pub async fn expired_lease_is_reclaimed<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = enqueue(&s, job(json!("x"))).await;
    let _c = claim_one(&s).await;
    assert_eq!(
        s.release_stale_locks().await.expect("reclaim").touched(),
        0,
        "lease still live"
    );
    h.advance(LEASE + Duration::from_secs(1)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 1);
    let j = s.get_job(id).await.expect("get").expect("exists");
    assert!(j.status.is_claimable(), "status {}", j.status);
    assert!(j.lease.is_none());
    assert!(j.last_error.is_some());
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 0);
}

/// A renewed lease is not reclaimed at the old expiry.
pub async fn heartbeat_keeps_lease_alive<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    enqueue(&s, job(json!("x"))).await;
    let c = claim_one(&s).await;
    h.advance(Duration::from_secs(20)).await;
    let renewed = s.heartbeat(&c.lease, LEASE).await.expect("heartbeat");
    assert!(renewed.expires_at > c.lease.expires_at);
    h.advance(Duration::from_secs(20)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 0);
    s.complete(&renewed, json!(1))
        .await
        .expect("complete after renewal");
}

/// Renewing many leases in one call renews each lease still held and reports every
/// other one lost, item by item and in order, without touching its job: a completed job,
/// a cancelled one, a reclaimed job's old lease (its new lease, in the same call, is
/// renewed), and a job that does not exist. The renewed leases outlive their first
/// expiry.
pub async fn heartbeat_many_renews_each_held_lease<H: ConformanceHarness>(h: &H) {
    let (s, old, new) = reclaimed(h).await;
    for i in 0..3 {
        enqueue(&s, job(json!(i))).await;
    }
    let mut claimed = s.dequeue(params(3)).await.expect("dequeue");
    assert_eq!(claimed.len(), 3);
    let cancelled = claimed.pop().expect("third");
    let done = claimed.pop().expect("second");
    let kept = claimed.pop().expect("first");
    s.complete(&done.lease, json!("done"))
        .await
        .expect("complete");
    assert!(s.cancel(cancelled.job.id).await.expect("cancel"));
    h.advance(Duration::from_secs(20)).await;
    let ghost = crate::job::Lease {
        job_id: 1 << 40,
        ..kept.lease.clone()
    };
    let batch = [
        kept.lease.clone(),
        old.lease.clone(),
        done.lease.clone(),
        new.lease.clone(),
        cancelled.lease.clone(),
        ghost,
    ];
    let mut out = s
        .heartbeat_many(&batch, LEASE)
        .await
        .expect("heartbeat_many")
        .into_iter();
    assert_eq!(out.len(), batch.len(), "one result per lease");
    let kept_renewed = out.next().expect("1").expect("a held lease renews");
    assert_lease_lost(out.next().expect("2"));
    assert_lease_lost(out.next().expect("3"));
    let new_renewed = out.next().expect("4").expect("the current lease renews");
    assert_lease_lost(out.next().expect("5"));
    assert_lease_lost(out.next().expect("6"));
    for (renewed, before) in [(&kept_renewed, &kept.lease), (&new_renewed, &new.lease)] {
        assert_eq!(
            (renewed.job_id, renewed.token),
            (before.job_id, before.token)
        );
        assert!(
            renewed.expires_at > before.expires_at,
            "{renewed:?} vs {before:?}"
        );
    }
    let stored = s.get_job(kept.job.id).await.expect("get").expect("exists");
    assert_eq!(
        stored.lease.map(|l| l.expires_at),
        Some(kept_renewed.expires_at)
    );
    assert_eq!(status(&s, done.job.id).await, JobStatus::Completed);
    assert_eq!(status(&s, cancelled.job.id).await, JobStatus::Cancelled);
    // Both renewed leases are now past their first expiry, not their renewed one.
    h.advance(Duration::from_secs(20)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 0);
    s.complete(&kept_renewed, json!(1))
        .await
        .expect("complete after renewal");
    s.complete(&new_renewed, json!(2))
        .await
        .expect("complete after renewal");
    assert!(s
        .heartbeat_many(&[], LEASE)
        .await
        .expect("empty batch")
        .is_empty());
}

/// An expired lease on the last allowed attempt fails the job.
pub async fn reclaim_with_attempts_exhausted_fails_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut j = job(json!("x"));
    j.max_attempts = 1;
    let id = enqueue(&s, j).await;
    let c = claim_one(&s).await;
    h.advance(LEASE + Duration::from_secs(1)).await;
    assert_eq!(s.release_stale_locks().await.expect("reclaim").touched(), 1);
    assert_eq!(status(&s, id).await, JobStatus::Failed);
    assert_lease_lost(s.complete(&c.lease, json!(1)).await);
}

/// A retryable failure waits for its delay as retrying; a terminal one fails.
pub async fn retry_then_terminal_failure<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = enqueue(&s, job(json!("x"))).await;
    let c = claim_one(&s).await;
    s.fail(
        &c.lease,
        Failure {
            error: "boom 1".into(),
            retry_in: Some(Duration::from_secs(60)),
        },
    )
    .await
    .expect("fail with retry");
    let j = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(j.status, JobStatus::Retrying);
    assert!(j.is_retrying());
    assert_eq!(j.last_error.as_deref(), Some("boom 1"));
    assert!(s.dequeue(params(1)).await.expect("dequeue").is_empty());
    h.advance(Duration::from_secs(61)).await;
    let c2 = claim_one(&s).await;
    assert_eq!(c2.job.attempt, 2);
    s.fail(
        &c2.lease,
        Failure {
            error: "boom 2".into(),
            retry_in: None,
        },
    )
    .await
    .expect("fail terminally");
    let j = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.last_error.as_deref(), Some("boom 2"));
    assert!(j.completed_at.is_some());
    assert!(s.dequeue(params(1)).await.expect("dequeue").is_empty());
}

/// Releasing a lease returns the job at once with its attempt count unchanged.
pub async fn release_does_not_spend_an_attempt<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = enqueue(&s, job(json!("x"))).await;
    let c = claim_one(&s).await;
    s.release(&c.lease).await.expect("release");
    let j = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(j.attempt, 0);
    assert_eq!(j.status, JobStatus::Pending);
    let c2 = claim_one(&s).await;
    assert_eq!(c2.job.attempt, 1);
    assert_lease_lost(s.complete(&c.lease, json!(1)).await);
}

/// Checkpoints are stored per job, replaced by key, listed in key order (one job's, or
/// several jobs' at once in the order asked, an unknown job's empty) and deleted.
pub async fn checkpoints_roundtrip<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = enqueue(&s, job(json!("x"))).await;
    let other = enqueue(&s, job(json!("y"))).await;
    let c = s.dequeue(params(2)).await.expect("dequeue");
    let lease = c
        .iter()
        .find(|c| c.job.id == id)
        .expect("claimed")
        .lease
        .clone();
    let other_lease = c
        .iter()
        .find(|c| c.job.id == other)
        .expect("claimed")
        .lease
        .clone();
    let cp = |key: &str, name: &str, outcome| Checkpoint {
        key: key.into(),
        name: name.into(),
        outcome,
        created_at: None,
        args_hash: None,
    };
    s.checkpoint(&lease, cp("0", "a", CheckpointOutcome::Ok(json!(1))))
        .await
        .expect("save");
    s.checkpoint(&lease, cp("1", "b", CheckpointOutcome::Err("nope".into())))
        .await
        .expect("save");
    s.checkpoint(
        &lease,
        cp("1/0", "c", CheckpointOutcome::Ok(json!({"k": [1, 2]}))),
    )
    .await
    .expect("save");
    s.checkpoint(&lease, cp("0", "a", CheckpointOutcome::Ok(json!(2))))
        .await
        .expect("replace");
    s.checkpoint(&other_lease, cp("0", "z", CheckpointOutcome::Ok(json!(9))))
        .await
        .expect("save other");
    let got = s.list_checkpoints(id).await.expect("checkpoints");
    let now = s.now().await.expect("now");
    for c in &got {
        let at = c
            .created_at
            .expect("storage records when a checkpoint was written");
        assert!(
            (now - at).num_seconds().abs() < 5,
            "written at {at}, now {now}"
        );
    }
    let got: Vec<Checkpoint> = got
        .into_iter()
        .map(|c| Checkpoint {
            created_at: None,
            ..c
        })
        .collect();
    assert_eq!(
        got,
        vec![
            cp("0", "a", CheckpointOutcome::Ok(json!(2))),
            cp("1", "b", CheckpointOutcome::Err("nope".into())),
            cp("1/0", "c", CheckpointOutcome::Ok(json!({"k": [1, 2]}))),
        ]
    );
    let unknown = id.max(other) + 1000;
    let many = s
        .list_checkpoints_many(vec![other, id, unknown, id])
        .await
        .expect("checkpoints of several jobs");
    let own = s.list_checkpoints(id).await.expect("checkpoints");
    let others = s.list_checkpoints(other).await.expect("checkpoints");
    assert_eq!(many, vec![others, own.clone(), Vec::new(), own]);
    assert_eq!(
        s.list_checkpoints_many(Vec::new())
            .await
            .expect("no jobs asked"),
        Vec::<Vec<Checkpoint>>::new()
    );
    assert_eq!(s.delete_checkpoints(id).await.expect("delete"), 3);
    assert!(s
        .list_checkpoints(id)
        .await
        .expect("checkpoints")
        .is_empty());
    assert_eq!(
        s.list_checkpoints(other).await.expect("checkpoints").len(),
        1
    );
}

/// A dedupe key held by an unfinished job returns that job; once it finished, a new one
/// is created.
pub async fn dedupe_key_returns_existing_unfinished_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut j = job(json!(1));
    j.dedupe_key = Some("k".into());
    let first = s.enqueue(j.clone()).await.expect("enqueue");
    assert!(first.created);
    let second = s.enqueue(j.clone()).await.expect("enqueue");
    assert_eq!(second.id, first.id);
    assert!(!second.created);
    // Still deduplicated while running.
    let c = claim_one(&s).await;
    assert_eq!(s.enqueue(j.clone()).await.expect("enqueue").id, first.id);
    s.complete(&c.lease, json!(null)).await.expect("complete");
    let third = s.enqueue(j).await.expect("enqueue");
    assert!(third.created);
    assert_ne!(third.id, first.id);
    let mut other = job(json!(2));
    other.dedupe_key = Some("other".into());
    assert!(s.enqueue(other).await.expect("enqueue").created);
}

/// Bulk enqueue returns ids in input order and applies dedupe keys, within the batch too.
pub async fn enqueue_many_keeps_order_and_dedupes<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut keyed = job(json!("k"));
    keyed.dedupe_key = Some("same".into());
    let out = s
        .enqueue_many(vec![job(json!(0)), keyed.clone(), job(json!(2)), keyed])
        .await
        .expect("enqueue_many");
    assert_eq!(out.len(), 4);
    assert!(out[0].created && out[1].created && out[2].created);
    assert!(!out[3].created);
    assert_eq!(out[3].id, out[1].id);
    assert!(out[0].id < out[1].id && out[1].id < out[2].id);
    for (i, e) in out.iter().take(3).enumerate() {
        let j = s.get_job(e.id).await.expect("get").expect("exists");
        let want = if i == 1 { json!("k") } else { json!(i) };
        assert_eq!(j.payload, want);
    }
    assert!(s
        .enqueue_many(vec![])
        .await
        .expect("empty batch")
        .is_empty());
}

/// Listing filters by status, queue and task, and pages by id.
pub async fn list_jobs_filters_and_paginates<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut j = NewJob::new(if i % 2 == 0 { "t" } else { "u" }, json!(i));
        j.queue = if i < 3 { "default".into() } else { "q2".into() };
        ids.push(enqueue(&s, j).await);
    }
    let c = claim_one(&s).await;
    s.complete(&c.lease, json!(null)).await.expect("complete");
    let all = s.list_jobs(JobFilter::default()).await.expect("list");
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    let done = s
        .list_jobs(JobFilter {
            statuses: vec![JobStatus::Completed],
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        done.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![c.job.id]
    );
    let q2u = s
        .list_jobs(JobFilter {
            queue: Some("q2".into()),
            task: Some("u".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(q2u.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[3]]);
    let page1 = s
        .list_jobs(JobFilter {
            limit: Some(2),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page1.len(), 2);
    let page2 = s
        .list_jobs(JobFilter {
            limit: Some(2),
            after_id: Some(page1[1].id),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[3]]
    );
}

/// Counts group jobs by queue and status.
pub async fn counts_per_queue_and_status<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    for i in 0..3 {
        enqueue(&s, job(json!(i))).await;
    }
    let mut j = job(json!("q"));
    j.queue = "other".into();
    enqueue(&s, j).await;
    let c = claim_one(&s).await;
    s.complete(&c.lease, json!(null)).await.expect("complete");
    let _running = claim_one(&s).await;
    let mut counts: Vec<(String, JobStatus, u64)> = s
        .counts()
        .await
        .expect("counts")
        .into_iter()
        .map(|c| (c.queue, c.status, c.count))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("default".into(), JobStatus::Pending, 1),
            ("default".into(), JobStatus::Running, 1),
            ("default".into(), JobStatus::Completed, 1),
            ("other".into(), JobStatus::Pending, 1),
        ]
    );
}

/// Cancelling stops a pending job from running and fences a running one's lease.
pub async fn cancel_pending_and_running_jobs<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let running = enqueue(&s, job(json!(1))).await;
    let c = claim_one(&s).await;
    let pending = enqueue(&s, job(json!(2))).await;
    assert!(s.cancel(pending).await.expect("cancel pending"));
    assert!(s.cancel(running).await.expect("cancel running"));
    assert_eq!(status(&s, pending).await, JobStatus::Cancelled);
    assert_eq!(status(&s, running).await, JobStatus::Cancelled);
    assert_lease_lost(s.complete(&c.lease, json!(1)).await);
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    assert!(
        !s.cancel(pending).await.expect("cancel again"),
        "already finished"
    );
    assert!(matches!(
        s.cancel(999_999_999).await,
        Err(Error::JobNotFound(_))
    ));
}

/// Asking for a job that does not exist is `None`, not an error.
pub async fn get_missing_job_is_none<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    assert!(s.get_job(987_654_321).await.expect("get").is_none());
}
