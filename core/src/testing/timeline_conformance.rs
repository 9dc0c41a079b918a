//! Storage conformance for the data a job's timeline shows: the job's own fields (parent,
//! tags, flags, serial key), its attempt history and finished counts.

use super::ConformanceHarness;
use crate::job::{JobId, JobStatus, NewJob};
use crate::storage::{
    AttemptOutcome, AttemptRecord, ClaimedJob, DequeueParams, DynStorage, Failure, JobFilter,
    SpawnChildrenParams,
};
use serde_json::json;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

async fn claim(s: &DynStorage, holder: &str) -> ClaimedJob {
    let mut got = s
        .dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 1,
            lease_duration: LEASE,
            holder: holder.into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue");
    assert_eq!(got.len(), 1, "expected one claimable job");
    got.remove(0)
}

async fn attempts(s: &DynStorage, id: JobId) -> Vec<AttemptRecord> {
    s.list_attempts(id).await.expect("list_attempts")
}

/// (attempt, worker, outcome, error) of each record, for compact assertions.
fn summary(a: &[AttemptRecord]) -> Vec<(i32, Option<&str>, AttemptOutcome, Option<&str>)> {
    a.iter()
        .map(|r| {
            (
                r.attempt,
                r.worker.as_deref(),
                r.outcome,
                r.error.as_deref(),
            )
        })
        .collect()
}

/// A stored job carries its parent, tags, flags and serial key on every read.
pub async fn job_carries_parent_tags_flags_and_serial_key<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut j = NewJob::new("t", json!(1));
    j.tags = vec!["billing".into(), "eu".into()];
    j.flags = vec!["slow".into()];
    j.serial_key = Some("account-7".into());
    let id = s.enqueue(j).await.expect("enqueue").id;
    let got = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(got.tags, ["billing", "eu"]);
    assert_eq!(got.flags, ["slow"]);
    assert_eq!(got.serial_key.as_deref(), Some("account-7"));
    assert_eq!(got.parent_id, None);
    let listed = s.list_jobs(JobFilter::default()).await.expect("list");
    assert_eq!(listed[0].tags, ["billing", "eu"]);
    assert_eq!(listed[0].serial_key.as_deref(), Some("account-7"));
    let c = claim(&s, "w").await;
    assert_eq!(c.job.flags, ["slow"]);
    assert_eq!(c.job.serial_key.as_deref(), Some("account-7"));
    let kids = s
        .spawn_children(SpawnChildrenParams {
            lease: &c.lease,
            key: "0",
            name: "kids",
            jobs: vec![NewJob::new("t", json!("kid"))],
        })
        .await
        .expect("spawn");
    let kid = s.get_job(kids[0]).await.expect("get").expect("exists");
    assert_eq!(kid.parent_id, Some(id));
    assert!(kid.tags.is_empty() && kid.flags.is_empty() && kid.serial_key.is_none());
}

/// Every attempt is recorded with its number, worker, times, outcome and error: retried,
/// released at shutdown, suspended, completed; the running one shows as running.
pub async fn attempt_history_records_each_attempt<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut j = NewJob::new("t", json!(1));
    j.max_attempts = 5;
    let id = s.enqueue(j).await.expect("enqueue").id;
    assert!(attempts(&s, id).await.is_empty(), "never ran");

    let c = claim(&s, "w-a").await;
    let running = attempts(&s, id).await;
    assert_eq!(
        summary(&running),
        [(1, Some("w-a"), AttemptOutcome::Running, None)]
    );
    assert_eq!(running[0].finished_at, None);
    h.advance(Duration::from_secs(2)).await;
    s.fail(
        &c.lease,
        Failure {
            error: "boom".into(),
            retry_in: Some(Duration::ZERO),
        },
    )
    .await
    .expect("fail");
    let c = claim(&s, "w-b").await;
    s.release(&c.lease).await.expect("release");
    let c = claim(&s, "w-b").await;
    s.suspend(&c.lease, None).await.expect("suspend");
    // Woken: due now, claimed again under the same attempt number.
    s.reschedule_job(id, s.now().await.expect("now"))
        .await
        .expect("reschedule");
    let c = claim(&s, "w-c").await;
    s.complete(&c.lease, json!("done")).await.expect("complete");

    let history = attempts(&s, id).await;
    assert_eq!(
        summary(&history),
        [
            (1, Some("w-a"), AttemptOutcome::Retrying, Some("boom")),
            (2, Some("w-b"), AttemptOutcome::Released, None),
            (2, Some("w-b"), AttemptOutcome::Suspended, None),
            (2, Some("w-c"), AttemptOutcome::Completed, None),
        ]
    );
    for r in &history {
        let finished = r.finished_at.expect("an ended attempt has an end");
        assert!(r.started_at <= finished, "{r:?}");
    }
    assert!(
        history[0].finished_at.expect("ended") - history[0].started_at
            >= chrono::Duration::seconds(1),
        "the first attempt ran about two seconds: {:?}",
        history[0]
    );
}

/// An attempt that ends by a stale lock's release, a cancel or a terminal failure is
/// recorded; deleting or purging a job takes its history with it.
pub async fn attempt_history_records_reclaims_cancels_and_goes_with_the_job<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let s = h.storage();
    let reclaimed = s
        .enqueue(NewJob::new("t", json!("r")))
        .await
        .expect("enqueue")
        .id;
    claim(&s, "dead").await;
    h.advance(LEASE + Duration::from_secs(1)).await;
    s.release_stale_locks().await.expect("sweep");
    let history = attempts(&s, reclaimed).await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].attempt,
            history[0].worker.as_deref(),
            history[0].outcome
        ),
        (1, Some("dead"), AttemptOutcome::Reclaimed)
    );
    assert!(history[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("lease expired")));
    // It went back to retrying: claim it away so later claims see only new jobs.
    let again = claim(&s, "w").await;
    s.complete(&again.lease, json!(0)).await.expect("complete");

    let cancelled = s
        .enqueue(NewJob::new("t", json!("c")))
        .await
        .expect("enqueue")
        .id;
    claim(&s, "w").await;
    assert!(s.cancel(cancelled).await.expect("cancel"));
    assert_eq!(
        summary(&attempts(&s, cancelled).await),
        [(1, Some("w"), AttemptOutcome::Cancelled, None)]
    );

    let mut once = NewJob::new("t", json!("f"));
    once.max_attempts = 1;
    let failed = s.enqueue(once).await.expect("enqueue").id;
    let c = claim(&s, "w").await;
    s.fail(
        &c.lease,
        Failure {
            error: "bad input".into(),
            retry_in: None,
        },
    )
    .await
    .expect("fail");
    assert_eq!(
        summary(&attempts(&s, failed).await),
        [(1, Some("w"), AttemptOutcome::Failed, Some("bad input"))]
    );

    assert!(s.delete_job(failed).await.expect("delete"));
    assert!(
        attempts(&s, failed).await.is_empty(),
        "deleted with its job"
    );
    h.advance(Duration::from_secs(10)).await;
    let cut = s.now().await.expect("now");
    assert_eq!(s.purge_finished(cut).await.expect("purge"), 2);
    assert!(
        attempts(&s, reclaimed).await.is_empty(),
        "purged with its job"
    );
    assert!(
        attempts(&s, cancelled).await.is_empty(),
        "purged with its job"
    );
}

/// Finished counts cover the jobs that finished at or after a time, per queue and final
/// status.
pub async fn finished_counts_since_a_time<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let early = s
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let c = claim(&s, "w").await;
    assert_eq!(c.job.id, early);
    s.complete(&c.lease, json!(1)).await.expect("complete");
    let cancelled = s
        .enqueue(NewJob::new("t", json!(2)))
        .await
        .expect("enqueue")
        .id;
    s.cancel(cancelled).await.expect("cancel");
    h.advance(Duration::from_secs(7200)).await;
    let since = s.now().await.expect("now") - chrono::Duration::seconds(3600);
    let mut once = NewJob::new("t", json!(3));
    once.max_attempts = 1;
    s.enqueue(once).await.expect("enqueue");
    let c = claim(&s, "w").await;
    s.fail(
        &c.lease,
        Failure {
            error: "x".into(),
            retry_in: None,
        },
    )
    .await
    .expect("fail");
    let recent = s.finished_counts(since).await.expect("finished_counts");
    let seen: Vec<_> = recent
        .iter()
        .map(|c| (c.queue.as_str(), c.status, c.count))
        .collect();
    assert_eq!(seen, [("default", JobStatus::Failed, 1)]);
    let all = s
        .finished_counts(since - chrono::Duration::seconds(7200))
        .await
        .expect("finished_counts");
    let mut seen: Vec<_> = all.iter().map(|c| (c.status, c.count)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (JobStatus::Completed, 1),
            (JobStatus::Failed, 1),
            (JobStatus::Cancelled, 1)
        ]
    );
}
