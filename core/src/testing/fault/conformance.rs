//! The fault wrapper's own cases, run on every backend by
//! [`crate::fault_conformance_tests`]: what each fault does to the backend and to the
//! caller.

use super::{FaultLog, FaultPlan, FaultStorage, Injected};
use crate::testing::ConformanceHarness;
use crate::{DequeueParams, Error, JobFilter, JobStatus, NewJob, Storage};
use serde_json::json;
use std::time::Duration;

fn dequeue_params() -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit: 10,
        lease_duration: Duration::from_secs(30),
        holder: "fault-test".into(),
        forbidden_flags: Vec::new(),
    }
}

async fn job_count(storage: &dyn Storage) -> usize {
    storage
        .list_jobs(JobFilter::default())
        .await
        .expect("list jobs")
        .len()
}

/// An error before the call reaches nothing; the log says so.
pub async fn error_before_reaches_nothing<H: ConformanceHarness>(h: &H) {
    let plan = FaultPlan::new(1).error_before(1_000).expect("plan");
    let faulty = FaultStorage::new(h.storage(), plan);
    let err = faulty
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect_err("the injected error");
    assert!(err.is_transient(), "{err}");
    assert_eq!(job_count(h.storage().as_ref()).await, 0);
    let records = faulty.log().records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].injected, Some(Injected::ErrorBefore));
    assert!(!records[0].backend_ok);
}

/// An error after a write: the write committed, the caller got an error.
pub async fn error_after_commits_and_reports_an_error<H: ConformanceHarness>(h: &H) {
    let plan = FaultPlan::new(2).error_after(1_000).expect("plan");
    let faulty = FaultStorage::new(h.storage(), plan);
    faulty
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect_err("the injected error");
    assert_eq!(
        job_count(h.storage().as_ref()).await,
        1,
        "the write committed"
    );
    // Reads are never failed after the fact: there is nothing to commit.
    assert_eq!(job_count(&faulty).await, 1);
    let records = faulty.log().records();
    assert_eq!(records[0].injected, Some(Injected::ErrorAfter));
    assert!(records[0].backend_ok);
    assert_eq!(records[1].injected, None);
}

/// After the crash point every call fails and reaches nothing.
pub async fn crash_refuses_every_later_call<H: ConformanceHarness>(h: &H) {
    let faulty = FaultStorage::new(h.storage(), FaultPlan::new(3).crash_after(2));
    faulty
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("first call");
    let claimed = faulty.dequeue(dequeue_params()).await.expect("second call");
    assert_eq!(claimed.len(), 1);
    assert!(!faulty.is_crashed());
    let err = faulty
        .complete(&claimed[0].lease, json!("done"))
        .await
        .expect_err("crashed");
    assert!(err.is_transient(), "{err}");
    assert!(faulty.is_crashed());
    faulty
        .enqueue(NewJob::new("t", json!(2)))
        .await
        .expect_err("still crashed");
    let job = h
        .storage()
        .get_job(claimed[0].job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(
        job.status,
        JobStatus::Running,
        "the completion never arrived"
    );
    assert_eq!(job_count(h.storage().as_ref()).await, 1);
    let injected: Vec<_> = faulty.log().records().iter().map(|r| r.injected).collect();
    assert_eq!(
        injected,
        [None, None, Some(Injected::Crashed), Some(Injected::Crashed)]
    );
}

/// A paused write is handed to the test, which lets the lease expire and the job be
/// claimed again; resumed, the write is refused as stale and changes nothing.
pub async fn paused_write_past_its_lease_is_refused<H: ConformanceHarness>(h: &H) {
    let log = FaultLog::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let plan = FaultPlan::new(4).pause(1_000).expect("plan");
    let faulty = FaultStorage::new(h.storage(), plan)
        .with_log(log.clone())
        .with_owner("stopped")
        .with_pauses(tx);
    let storage = h.storage();
    storage
        .enqueue(NewJob::new("t", json!(1)))
        .await
        .expect("enqueue");
    // Claims are not fenced writes, so they are never paused.
    let claimed = faulty.dequeue(dequeue_params()).await.expect("claim");
    let lease = claimed[0].lease.clone();
    let late = tokio::spawn({
        let faulty = faulty.clone();
        let lease = lease.clone();
        async move { faulty.complete(&lease, json!("late")).await }
    });
    let paused = rx.recv().await.expect("the paused write");
    assert_eq!((paused.call, paused.lease.token), ("complete", lease.token));
    assert_eq!(paused.owner, "stopped");
    h.advance(Duration::from_secs(31)).await;
    let released = storage.release_stale_locks().await.expect("sweep");
    assert_eq!(released.released.len(), 1);
    let again = storage
        .dequeue(dequeue_params())
        .await
        .expect("claim again");
    assert_eq!(again.len(), 1);
    paused.resume();
    let err = late.await.expect("join").expect_err("stale");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    let job = storage
        .get_job(lease.job_id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!((job.status, job.result), (JobStatus::Running, None));
    let record = log
        .records()
        .into_iter()
        .find(|r| r.call == "complete")
        .expect("recorded");
    assert_eq!(record.injected, Some(Injected::Pause));
    assert!(!record.writes[0].accepted);
}

/// The same seed and the same calls inject the same faults; another seed differs.
pub async fn same_seed_injects_the_same_faults<H: ConformanceHarness>(h: &H) {
    let plan = |seed| {
        FaultPlan::new(seed)
            .error_before(300)
            .and_then(|p| p.error_after(300))
            .expect("plan")
    };
    let mut runs = Vec::new();
    for seed in [5, 5, 6] {
        let faulty = FaultStorage::new(h.storage(), plan(seed));
        for i in 0..40 {
            let _ = faulty.enqueue(NewJob::new("t", json!(i))).await;
        }
        let injected: Vec<_> = faulty.log().records().iter().map(|r| r.injected).collect();
        runs.push(injected);
    }
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
    assert!(runs[0].contains(&Some(Injected::ErrorAfter)));
    assert!(runs[0].contains(&None));
}
