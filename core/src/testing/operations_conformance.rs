//! Conformance cases for job-key modes, serial keys, flags, paused queues, schedules and
//! the management calls. The [`crate::conformance_tests`] macro turns
//! them into one test each.

use super::ConformanceHarness;
use crate::job::{Checkpoint, CheckpointOutcome, JobId, JobStatus, KeyMode, NewJob};
use crate::storage::AdvanceScheduleParams;
use crate::storage::{DequeueParams, DynStorage, Failure, JobFilter, ManualOutcome};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: Duration::from_secs(30),
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    }
}

fn keyed(payload: serde_json::Value, key: &str, mode: KeyMode) -> NewJob {
    let mut j = NewJob::new("t", payload);
    j.dedupe_key = Some(key.into());
    j.key_mode = mode;
    j
}

async fn get(s: &DynStorage, id: JobId) -> crate::Job {
    s.get_job(id).await.expect("get").expect("exists")
}

async fn unfinished_with_key(s: &DynStorage, key: &str) -> Vec<crate::Job> {
    s.list_jobs(JobFilter {
        limit: Some(10_000),
        ..JobFilter::default()
    })
    .await
    .expect("list")
    .into_iter()
    .filter(|j| !j.status.is_finished() && j.dedupe_key.as_deref() == Some(key))
    .collect()
}

/// Replace mode debounces: the waiting job takes the new payload and run_at.
pub async fn job_key_replace_updates_the_waiting_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut first = keyed(json!(1), "k", KeyMode::Replace);
    first.delay = Some(Duration::from_secs(60));
    let a = s.enqueue(first).await.expect("enqueue");
    let mut second = keyed(json!(2), "k", KeyMode::Replace);
    second.delay = Some(Duration::from_secs(600));
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    second.trace_context = Some(traceparent.into());
    let b = s.enqueue(second).await.expect("enqueue");
    assert_eq!(b.id, a.id);
    assert!(!b.created);
    let j = get(&s, a.id).await;
    assert_eq!(j.payload, json!(2));
    assert_eq!(
        j.trace_context.as_deref(),
        Some(traceparent),
        "the job runs for the latest enqueue, in its trace"
    );
    let now = s.now().await.expect("now");
    assert!(
        j.run_at > now + chrono::Duration::seconds(500),
        "run_at was replaced"
    );
}

/// Preserve-run-at throttles: the payload changes, the run_at stays.
pub async fn job_key_preserve_run_at_keeps_the_time<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut first = keyed(json!(1), "k", KeyMode::PreserveRunAt);
    first.delay = Some(Duration::from_secs(60));
    let a = s.enqueue(first).await.expect("enqueue");
    let before = get(&s, a.id).await.run_at;
    let mut second = keyed(json!(2), "k", KeyMode::PreserveRunAt);
    second.delay = Some(Duration::from_secs(600));
    assert_eq!(s.enqueue(second).await.expect("enqueue").id, a.id);
    let j = get(&s, a.id).await;
    assert_eq!((j.payload, j.run_at), (json!(2), before));
}

/// A key whose holder is running: replace gives the key to a new job; dedupe keeps it.
pub async fn job_key_with_a_running_holder<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let a = s
        .enqueue(keyed(json!(1), "k", KeyMode::Replace))
        .await
        .expect("enqueue")
        .id;
    let claimed = s.dequeue(params(1)).await.expect("dequeue");
    assert_eq!(claimed[0].job.id, a);
    assert_eq!(
        s.enqueue(keyed(json!(9), "k", KeyMode::Dedupe))
            .await
            .expect("enqueue")
            .id,
        a
    );
    let b = s
        .enqueue(keyed(json!(2), "k", KeyMode::Replace))
        .await
        .expect("enqueue");
    assert!(b.created && b.id != a);
    assert_eq!(
        get(&s, a).await.payload,
        json!(1),
        "the running job is untouched"
    );
    s.complete(&claimed[0].lease, json!(null))
        .await
        .expect("running job completes");
    let holders = unfinished_with_key(&s, "k").await;
    assert_eq!(holders.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
}

/// Concurrent enqueues with one key make one job, whatever the mode.
pub async fn concurrent_enqueues_with_one_key_make_one_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    for (mode, key) in [
        (KeyMode::Dedupe, "d"),
        (KeyMode::Replace, "r"),
        (KeyMode::PreserveRunAt, "p"),
    ] {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.enqueue(keyed(json!(i), key, mode)).await
            }));
        }
        let mut ids = HashSet::new();
        for t in tasks {
            ids.insert(t.await.expect("task").expect("enqueue").id);
        }
        assert_eq!(ids.len(), 1, "{mode:?}: {ids:?}");
        assert_eq!(unfinished_with_key(&s, key).await.len(), 1);
    }
}

/// At most one job per serial key runs, even when claims race.
pub async fn serial_key_runs_one_job_at_a_time<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut j = NewJob::new("t", json!(i));
        j.serial_key = Some("account-1".into());
        ids.push(s.enqueue(j).await.expect("enqueue").id);
    }
    let free = s
        .enqueue(NewJob::new("t", json!("free")))
        .await
        .expect("enqueue")
        .id;
    let (a, b) = tokio::join!(s.dequeue(params(10)), s.dequeue(params(10)));
    let mut claimed: Vec<_> = a
        .expect("dequeue")
        .into_iter()
        .chain(b.expect("dequeue"))
        .collect();
    claimed.sort_by_key(|c| c.job.id);
    assert_eq!(
        claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![ids[0], free]
    );
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    // A retry frees the key too; the next job in order runs.
    s.fail(
        &claimed[0].lease,
        Failure {
            error: "x".into(),
            retry_in: Some(Duration::from_secs(3600)),
        },
    )
    .await
    .expect("fail");
    let next = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(
        next.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    s.complete(&next[0].lease, json!(null))
        .await
        .expect("complete");
    let last = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(
        last.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
}

/// A worker refusing a flag does not claim jobs that carry it.
pub async fn forbidden_flags_are_not_claimed<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut flagged = NewJob::new("t", json!("gpu"));
    flagged.flags = vec!["gpu".into(), "slow".into()];
    let flagged = s.enqueue(flagged).await.expect("enqueue").id;
    let plain = s
        .enqueue(NewJob::new("t", json!("plain")))
        .await
        .expect("enqueue")
        .id;
    let mut p = params(10);
    p.forbidden_flags = vec!["slow".into()];
    let got = s.dequeue(p).await.expect("dequeue");
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![plain]
    );
    let got = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![flagged]
    );
}

/// Nothing is claimed from a paused queue until it is resumed.
pub async fn paused_queue_is_not_claimed<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    s.set_queue_paused("default", true).await.expect("pause");
    assert_eq!(
        s.paused_queues().await.expect("paused"),
        vec!["default".to_string()]
    );
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    s.set_queue_paused("default", false).await.expect("resume");
    assert!(s.paused_queues().await.expect("paused").is_empty());
    assert_eq!(s.dequeue(params(10)).await.expect("dequeue")[0].job.id, id);
}

/// Schedules are stored, updated in place, paused, listed and removed.
pub async fn schedules_are_stored_paused_and_removed<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let now = s.now().await.expect("now");
    s.upsert_schedule("a", json!({"v": 1}), now)
        .await
        .expect("upsert");
    s.upsert_schedule("b", json!({"v": 2}), now)
        .await
        .expect("upsert");
    let later = now + chrono::Duration::seconds(60);
    assert!(s
        .advance_schedule(AdvanceScheduleParams {
            name: "a",
            from: now,
            to: later,
            jobs: vec![]
        })
        .await
        .expect("advance")
        .is_some());
    s.upsert_schedule("a", json!({"v": 3}), now + chrono::Duration::seconds(90))
        .await
        .expect("upsert again");
    assert!(s.set_schedule_paused("a", true).await.expect("pause"));
    assert!(!s
        .set_schedule_paused("missing", true)
        .await
        .expect("pause missing"));
    let list = s.schedules().await.expect("list");
    assert_eq!(
        list.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(list[0].definition, json!({"v": 3}));
    assert_eq!(
        list[0].cursor, later,
        "the cursor survives a definition update"
    );
    assert!(list[0].paused && !list[1].paused);
    assert!(s.delete_schedule("a").await.expect("delete"));
    assert!(!s.delete_schedule("a").await.expect("delete again"));
    assert_eq!(s.schedules().await.expect("list").len(), 1);
}

/// Advancing a schedule is a compare-and-set: of racing schedulers exactly one wins and
/// its jobs are inserted once.
pub async fn advance_schedule_is_compare_and_set<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let now = s.now().await.expect("now");
    s.upsert_schedule("tick", json!({}), now)
        .await
        .expect("upsert");
    let to = now + chrono::Duration::seconds(60);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.advance_schedule(AdvanceScheduleParams {
                name: "tick",
                from: now,
                to,
                jobs: vec![NewJob::new("t", json!("tick"))],
            })
            .await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(ids) = t.await.expect("task").expect("advance") {
            winners.push(ids);
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(winners[0].len(), 1);
    let rec = s.schedules().await.expect("list").remove(0);
    assert_eq!((rec.cursor, rec.last_job_id), (to, Some(winners[0][0])));
    assert_eq!(
        s.list_jobs(JobFilter::default()).await.expect("list").len(),
        1
    );
    assert!(s
        .advance_schedule(AdvanceScheduleParams {
            name: "missing",
            from: now,
            to,
            jobs: vec![]
        })
        .await
        .expect("advance")
        .is_none());
}

/// Failed jobs are requeued from scratch or keeping their checkpoints.
pub async fn retry_jobs_requeues_failed_jobs<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut ids = Vec::new();
    for i in 0..2 {
        let mut j = NewJob::new("t", json!(i));
        j.max_attempts = 1;
        ids.push(s.enqueue(j).await.expect("enqueue").id);
    }
    for c in s.dequeue(params(2)).await.expect("dequeue") {
        let cp = Checkpoint {
            key: "0".into(),
            name: "a".into(),
            outcome: CheckpointOutcome::Ok(json!(1)),
            created_at: None,
            args_hash: None,
        };
        s.checkpoint(&c.lease, cp).await.expect("save");
        s.fail(
            &c.lease,
            Failure {
                error: "boom".into(),
                retry_in: None,
            },
        )
        .await
        .expect("fail");
    }
    let pending = s
        .enqueue(NewJob::new("t", json!("p")))
        .await
        .expect("enqueue")
        .id;
    assert_eq!(
        s.retry_jobs(&[ids[0], pending], false)
            .await
            .expect("retry"),
        1
    );
    assert_eq!(s.retry_jobs(&[ids[1]], true).await.expect("retry"), 1);
    for id in &ids {
        let j = get(&s, *id).await;
        assert_eq!((j.status, j.attempt), (JobStatus::Pending, 0));
    }
    assert!(s.list_checkpoints(ids[0]).await.expect("cps").is_empty());
    assert_eq!(s.list_checkpoints(ids[1]).await.expect("cps").len(), 1);
    assert_eq!(s.dequeue(params(10)).await.expect("dequeue").len(), 3);
}

/// Rescheduling moves a job that has not started; others are left alone.
pub async fn reschedule_moves_a_waiting_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let id = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let later = s.now().await.expect("now") + chrono::Duration::seconds(3600);
    assert!(s.reschedule_job(id, later).await.expect("reschedule"));
    assert!(s.dequeue(params(10)).await.expect("dequeue").is_empty());
    h.advance(Duration::from_secs(3601)).await;
    let c = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(c[0].job.id, id);
    assert!(
        !s.reschedule_job(id, later).await.expect("running job"),
        "running jobs do not move"
    );
}

/// Jobs that are not running can be completed or failed by hand.
pub async fn finish_jobs_by_hand<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let a = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let b = s
        .enqueue(NewJob::new("t", json!(2)))
        .await
        .expect("enqueue")
        .id;
    let running = s
        .enqueue(NewJob::new("t", json!(3)))
        .await
        .expect("enqueue")
        .id;
    s.reschedule_job(
        a,
        s.now().await.expect("now") + chrono::Duration::seconds(3600),
    )
    .await
    .expect("move");
    s.reschedule_job(
        b,
        s.now().await.expect("now") + chrono::Duration::seconds(3600),
    )
    .await
    .expect("move");
    let c = s.dequeue(params(10)).await.expect("dequeue");
    assert_eq!(c[0].job.id, running);
    let n = s
        .finish_jobs(&[a, running], ManualOutcome::Complete(json!("by hand")))
        .await
        .expect("complete");
    assert_eq!(n, 1);
    assert_eq!(
        s.finish_jobs(&[b], ManualOutcome::Fail("gave up".into()))
            .await
            .expect("fail"),
        1
    );
    let ja = get(&s, a).await;
    assert_eq!(
        (ja.status, ja.result),
        (JobStatus::Completed, Some(json!("by hand")))
    );
    let jb = get(&s, b).await;
    assert_eq!(
        (jb.status, jb.last_error.as_deref()),
        (JobStatus::Failed, Some("gave up"))
    );
    assert_eq!(get(&s, running).await.status, JobStatus::Running);
}

/// Purging deletes jobs finished before the cut-off, with their checkpoints.
pub async fn purge_finished_removes_old_jobs<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let old = s
        .enqueue(NewJob::new("t", json!("old")))
        .await
        .expect("enqueue")
        .id;
    let c = s.dequeue(params(1)).await.expect("dequeue").remove(0);
    let cp = Checkpoint {
        key: "0".into(),
        name: "a".into(),
        outcome: CheckpointOutcome::Ok(json!(1)),
        created_at: None,
        args_hash: None,
    };
    s.checkpoint(&c.lease, cp).await.expect("save");
    s.complete(&c.lease, json!(null)).await.expect("complete");
    h.advance(Duration::from_secs(7200)).await;
    let recent = s
        .enqueue(NewJob::new("t", json!("new")))
        .await
        .expect("enqueue")
        .id;
    let c = s.dequeue(params(1)).await.expect("dequeue").remove(0);
    s.complete(&c.lease, json!(null)).await.expect("complete");
    let pending = s
        .enqueue(NewJob::new("t", json!("pending")))
        .await
        .expect("enqueue")
        .id;
    let cutoff = s.now().await.expect("now") - chrono::Duration::seconds(3600);
    assert_eq!(s.purge_finished(cutoff).await.expect("purge"), 1);
    assert!(s.get_job(old).await.expect("get").is_none());
    assert!(s.list_checkpoints(old).await.expect("cps").is_empty());
    assert!(s.get_job(recent).await.expect("get").is_some());
    assert!(s.get_job(pending).await.expect("get").is_some());
}

/// Listing filters by tag and creation time.
pub async fn list_filters_by_tag_and_time<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut tagged = NewJob::new("t", json!(1));
    tagged.tags = vec!["billing".into(), "eu".into()];
    let tagged = s.enqueue(tagged).await.expect("enqueue").id;
    let start = s.now().await.expect("now");
    h.advance(Duration::from_secs(10)).await;
    let mid = s.now().await.expect("now");
    let late = s
        .enqueue(NewJob::new("t", json!(2)))
        .await
        .expect("enqueue")
        .id;
    let by_tag = s
        .list_jobs(JobFilter {
            tag: Some("eu".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        by_tag.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![tagged]
    );
    let after = s
        .list_jobs(JobFilter {
            created_after: Some(mid - chrono::Duration::seconds(1)),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(after.iter().map(|j| j.id).collect::<Vec<_>>(), vec![late]);
    let before = s
        .list_jobs(JobFilter {
            created_before: Some(start + chrono::Duration::seconds(1)),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        before.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![tagged]
    );
}
