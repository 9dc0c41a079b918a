//! Storage conformance cases for what operators observe: the worker registry, the trace
//! context stored with a job, and the jobs a stale-lock sweep reports.

use super::ConformanceHarness;
use crate::job::{JobStatus, NewJob};
use crate::storage::{DequeueParams, DynStorage, SpawnChildrenParams, WorkerQueue, WorkerRecord};
use serde_json::json;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn params(queue: &str, limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec![queue.into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: LEASE,
        holder: "conformance".into(),
        forbidden_flags: Vec::new(),
    }
}

fn record(name: &str, now: chrono::DateTime<chrono::Utc>) -> WorkerRecord {
    WorkerRecord {
        name: name.into(),
        host: "host-a".into(),
        pid: 4242,
        queues: vec![
            WorkerQueue {
                name: "default".into(),
                concurrency: 8,
            },
            WorkerQueue {
                name: "mail".into(),
                concurrency: 2,
            },
        ],
        version: "0.1.0".into(),
        started_at: now,
        // Storage sets last_seen itself; this value must be ignored.
        last_seen: now - chrono::Duration::days(365),
        lease_ms: LEASE.as_millis() as i64,
    }
}

async fn workers(s: &DynStorage) -> Vec<WorkerRecord> {
    s.list_workers().await.expect("list_workers")
}

fn close(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> bool {
    (a - b).num_milliseconds().abs() < 5_000
}

/// A worker registers with every field kept, renews its record, shows as dead once its
/// lease time passes without renewal, and is removed by a deregister or a prune.
pub async fn worker_registry_records_renews_and_removes<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let now = s.now().await.expect("now");
    let rec = record("w1", now);
    s.register_worker(rec.clone()).await.expect("register");
    let got = workers(&s).await;
    assert_eq!(got.len(), 1);
    let w = &got[0];
    assert_eq!(
        (&w.name, &w.host, w.pid, &w.queues, &w.version, w.lease_ms),
        (
            &rec.name,
            &rec.host,
            rec.pid,
            &rec.queues,
            &rec.version,
            rec.lease_ms
        )
    );
    assert!(
        close(w.started_at, now),
        "started_at {} vs {now}",
        w.started_at
    );
    assert!(
        close(w.last_seen, now),
        "storage sets last_seen: {}",
        w.last_seen
    );
    assert!(!w.is_dead(s.now().await.expect("now")));

    h.advance(Duration::from_secs(20)).await;
    assert!(s.touch_worker("w1").await.expect("touch"));
    let seen = workers(&s).await[0].last_seen;
    assert!(
        seen - w.last_seen >= chrono::Duration::seconds(19),
        "touch moves last_seen: {} then {seen}",
        w.last_seen
    );
    h.advance(LEASE + Duration::from_secs(1)).await;
    let later = s.now().await.expect("now");
    assert!(
        workers(&s).await[0].is_dead(later),
        "unrenewed past its lease"
    );

    // Registering again under the same name replaces the record.
    let mut again = record("w1", later);
    again.queues.truncate(1);
    s.register_worker(again).await.expect("register again");
    let got = workers(&s).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].queues.len(), 1);
    assert!(!got[0].is_dead(later));

    s.register_worker(record("w2", later))
        .await
        .expect("register w2");
    assert_eq!(
        workers(&s)
            .await
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["w1", "w2"],
        "listed by name"
    );
    assert!(s.deregister_worker("w2").await.expect("deregister"));
    assert!(!s.deregister_worker("w2").await.expect("deregister twice"));

    // Prune removes only workers last seen before the cut.
    h.advance(Duration::from_secs(60)).await;
    s.register_worker(record("w3", s.now().await.expect("now")))
        .await
        .expect("register w3");
    let cut = s.now().await.expect("now") - chrono::Duration::seconds(30);
    assert_eq!(s.prune_workers(cut).await.expect("prune"), 1);
    assert_eq!(
        workers(&s)
            .await
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["w3"]
    );
    assert!(!s.touch_worker("w1").await.expect("touch a pruned worker"));
}

/// The enqueuing span's trace context is stored with the job and returned by every read:
/// get, list and claim, for single, bulk and child enqueues.
pub async fn trace_context_is_stored_with_the_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut one = NewJob::new("t", json!(1));
    one.trace_context = Some(TRACEPARENT.into());
    let id = s.enqueue(one).await.expect("enqueue").id;
    let plain = s
        .enqueue(NewJob::new("t", json!(2)))
        .await
        .expect("enqueue")
        .id;
    let mut bulk = NewJob::new("t", json!(3));
    bulk.trace_context = Some(TRACEPARENT.replace("-01", "-00"));
    let bulk_id = s.enqueue_many(vec![bulk]).await.expect("enqueue_many")[0].id;

    let got = |id| {
        let s = s.clone();
        async move {
            s.get_job(id)
                .await
                .expect("get")
                .expect("exists")
                .trace_context
        }
    };
    assert_eq!(got(id).await.as_deref(), Some(TRACEPARENT));
    assert_eq!(got(plain).await, None);
    assert_eq!(
        got(bulk_id).await.as_deref(),
        Some(TRACEPARENT.replace("-01", "-00").as_str())
    );
    let listed = s
        .list_jobs(crate::storage::JobFilter::default())
        .await
        .expect("list");
    assert_eq!(
        listed
            .iter()
            .find(|j| j.id == id)
            .and_then(|j| j.trace_context.clone())
            .as_deref(),
        Some(TRACEPARENT)
    );
    let claimed = s.dequeue(params("default", 10)).await.expect("dequeue");
    let first = claimed.iter().find(|c| c.job.id == id).expect("claimed");
    assert_eq!(first.job.trace_context.as_deref(), Some(TRACEPARENT));

    let mut child = NewJob::new("t", json!("child"));
    child.trace_context = Some(TRACEPARENT.into());
    let kids = s
        .spawn_children(SpawnChildrenParams {
            lease: &first.lease,
            key: "0",
            name: "kids",
            jobs: vec![child],
        })
        .await
        .expect("spawn");
    assert_eq!(got(kids[0]).await.as_deref(), Some(TRACEPARENT));
}

/// A sweep reports each job whose expired lease it released, with its queue, task,
/// attempt and the status it left: retrying with attempts left, failed without.
pub async fn release_stale_locks_reports_released_jobs<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let mut again = NewJob::new("t", json!("again"));
    again.queue = "q1".into();
    let again = s.enqueue(again).await.expect("enqueue").id;
    let mut last = NewJob::new("t", json!("last"));
    last.queue = "q1".into();
    last.max_attempts = 1;
    let last = s.enqueue(last).await.expect("enqueue").id;
    assert_eq!(s.dequeue(params("q1", 10)).await.expect("dequeue").len(), 2);
    assert!(s
        .release_stale_locks()
        .await
        .expect("sweep")
        .released
        .is_empty());
    h.advance(LEASE + Duration::from_secs(1)).await;
    let mut swept = s.release_stale_locks().await.expect("sweep").released;
    swept.sort_by_key(|j| j.job_id);
    let seen: Vec<_> = swept
        .iter()
        .map(|j| {
            (
                j.job_id,
                j.queue.as_str(),
                j.task.as_str(),
                j.attempt,
                j.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (again, "q1", "t", 1, JobStatus::Retrying),
            (last, "q1", "t", 1, JobStatus::Failed)
        ]
    );
    assert!(s
        .release_stale_locks()
        .await
        .expect("sweep")
        .released
        .is_empty());
}
