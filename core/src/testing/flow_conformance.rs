//! Conformance cases for flow control: a fleet-wide cap on running jobs per key,
//! enforced by storage at claim time. The [`crate::conformance_tests`]
//! macro turns them into one test each.

use super::ConformanceHarness;
use crate::job::{JobId, NewJob};
use crate::queue::Queue;
use crate::storage::{ClaimedJob, DequeueParams, DynStorage, Failure};
use crate::Error;
use serde_json::json;
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

fn keyed(key: &str, payload: i64) -> NewJob {
    let mut j = NewJob::new("t", json!(payload));
    j.serial_key = Some(key.into());
    j
}

/// Claims until nothing more is claimable, four claimers racing each round.
async fn claim_all(s: &DynStorage) -> Vec<ClaimedJob> {
    let mut out: Vec<ClaimedJob> = Vec::new();
    loop {
        let (a, b, c, d) = tokio::join!(
            s.dequeue(params(10)),
            s.dequeue(params(10)),
            s.dequeue(params(10)),
            s.dequeue(params(10))
        );
        let round: Vec<ClaimedJob> = [a, b, c, d]
            .into_iter()
            .flat_map(|r| r.expect("dequeue"))
            .collect();
        if round.is_empty() {
            out.sort_by_key(|c| c.job.id);
            return out;
        }
        out.extend(round);
    }
}

fn ids(claimed: &[ClaimedJob]) -> Vec<JobId> {
    claimed.iter().map(|c| c.job.id).collect()
}

/// A key's limit caps how many of its jobs run at once, however many claimers race;
/// jobs of the key start in claim order; finishing one lets the next start; lowering the
/// limit stops no running job but holds claims back; clearing it returns to one.
pub async fn key_limit_caps_running_jobs_per_key<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let queue = Queue::new(s.clone());
    queue.set_key_limit("acct", 3).await.expect("limit");
    let mut acct = Vec::new();
    for i in 0..6 {
        acct.push(s.enqueue(keyed("acct", i)).await.expect("enqueue").id);
    }
    let other = s.enqueue(keyed("other", 9)).await.expect("enqueue").id;
    let free = s
        .enqueue(NewJob::new("t", json!("free")))
        .await
        .expect("enqueue")
        .id;
    assert_eq!(
        queue.key_limits().await.expect("limits"),
        vec![("acct".to_string(), 3)]
    );
    let running = claim_all(&s).await;
    assert_eq!(
        ids(&running),
        vec![acct[0], acct[1], acct[2], other, free],
        "three of `acct` (its limit), one of `other` (no limit: one), the unkeyed job"
    );

    // One finishes: exactly one more of the key starts, the next in order.
    s.complete(&running[0].lease, json!(null))
        .await
        .expect("complete");
    let next = claim_all(&s).await;
    assert_eq!(ids(&next), vec![acct[3]]);

    // Lowered to 1 with three running: none is stopped, none starts until only one is
    // left running... and then still none, since one is running.
    queue.set_key_limit("acct", 1).await.expect("limit");
    s.complete(&running[1].lease, json!(null))
        .await
        .expect("complete");
    s.complete(&running[2].lease, json!(null))
        .await
        .expect("complete");
    assert!(claim_all(&s).await.is_empty(), "acct[3] still runs");
    s.complete(&next[0].lease, json!(null))
        .await
        .expect("complete");
    let one = claim_all(&s).await;
    assert_eq!(ids(&one), vec![acct[4]]);

    // Cleared: back to one at a time.
    queue.clear_key_limit("acct").await.expect("clear");
    assert!(queue.key_limits().await.expect("limits").is_empty());
    s.complete(&one[0].lease, json!(null))
        .await
        .expect("complete");
    assert_eq!(ids(&claim_all(&s).await), vec![acct[5]]);

    for (key, n) in [
        ("acct", 0),
        ("", 2),
        ("acct", crate::manage::MAX_KEY_LIMIT + 1),
    ] {
        assert!(
            matches!(
                queue.set_key_limit(key, n).await,
                Err(Error::InvalidOption { .. })
            ),
            "{key:?} {n}"
        );
    }
}

fn ran(claimed: &[ClaimedJob]) -> Vec<JobId> {
    ids(claimed)
}

/// Whatever ends a key's running job (terminal failure, cancel, an expired lease
/// reclaimed) lets the key's next job in order start; and when the job that was next
/// stops being claimable without running (cancelled, deleted, moved later) while the key
/// has room, the one after it starts instead. Between these, claims that find the key
/// full take nothing (on PostgreSQL they park its jobs: this checks every way they come
/// back).
pub async fn a_keys_next_job_runs_however_its_slot_or_turn_is_given_up<H: ConformanceHarness>(
    h: &H,
) {
    let s = h.storage();
    let mut j = Vec::new();
    for i in 0..10 {
        j.push(s.enqueue(keyed("acct", i)).await.expect("enqueue").id);
    }
    let first = claim_all(&s).await;
    assert_eq!(ran(&first), vec![j[0]]);
    assert!(claim_all(&s).await.is_empty(), "the key is busy");

    // A terminal failure frees the key.
    let terminal = Failure {
        error: "x".into(),
        retry_in: None,
    };
    s.fail(&first[0].lease, terminal).await.expect("fail");
    let second = claim_all(&s).await;
    assert_eq!(ran(&second), vec![j[1]]);
    assert!(claim_all(&s).await.is_empty());

    // So does cancelling the running job.
    assert!(s.cancel(j[1]).await.expect("cancel"));
    let third = claim_all(&s).await;
    assert_eq!(ran(&third), vec![j[2]]);
    assert!(claim_all(&s).await.is_empty());

    // And its lease expiring: the reclaimed job goes back in line behind the jobs that
    // were due before its retry, so the next in order is j[3].
    h.advance(Duration::from_secs(31)).await;
    let stale = s.release_stale_locks().await.expect("reclaim");
    assert_eq!(stale.released.len(), 1, "{stale:?}");
    let fourth = claim_all(&s).await;
    assert_eq!(ran(&fourth), vec![j[3]]);
    assert!(claim_all(&s).await.is_empty());

    // The job next in line is cancelled while the key has room: the one after it runs.
    s.complete(&fourth[0].lease, json!(null))
        .await
        .expect("complete");
    assert!(s.cancel(j[4]).await.expect("cancel"));
    let fifth = claim_all(&s).await;
    assert_eq!(ran(&fifth), vec![j[5]]);

    // ... or deleted.
    s.complete(&fifth[0].lease, json!(null))
        .await
        .expect("complete");
    assert!(s.delete_job(j[6]).await.expect("delete"));
    let sixth = claim_all(&s).await;
    assert_eq!(ran(&sixth), vec![j[7]]);

    // ... or moved to later.
    s.complete(&sixth[0].lease, json!(null))
        .await
        .expect("complete");
    let later = s.now().await.expect("now") + chrono::Duration::hours(1);
    assert!(s.reschedule_job(j[8], later).await.expect("reschedule"));
    let seventh = claim_all(&s).await;
    assert_eq!(ran(&seventh), vec![j[9]]);

    // Then the reclaimed j[2] (due since the reclaim), then j[8] when its time comes.
    s.complete(&seventh[0].lease, json!(null))
        .await
        .expect("complete");
    let eighth = claim_all(&s).await;
    assert_eq!(ran(&eighth), vec![j[2]]);
    s.complete(&eighth[0].lease, json!(null))
        .await
        .expect("complete");
    assert!(claim_all(&s).await.is_empty(), "j[8] is not due");
    h.advance(Duration::from_secs(3601)).await;
    assert_eq!(ran(&claim_all(&s).await), vec![j[8]]);
}

/// A key's next job that stops being claimable without running (cancelled, deleted,
/// moved later) after its key freed and after a claim that did not take it passes the
/// key's turn to the job after it. (On PostgreSQL the freed slot unparks the next job at
/// once; on SQLite the next claim does, here the one of another queue, so the turn
/// passing on is a second, separate step.)
pub async fn a_keys_turn_passes_on_when_its_next_job_leaves_after_the_key_freed<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let s = h.storage();
    for way in ["cancelled", "deleted", "moved later"] {
        let key = format!("turn {way}");
        let mut j = Vec::new();
        for i in 0..3 {
            j.push(s.enqueue(keyed(&key, i)).await.expect("enqueue").id);
        }
        let running = claim_all(&s).await;
        assert_eq!(ran(&running), vec![j[0]], "{way}");
        assert!(claim_all(&s).await.is_empty(), "{way}: the key is busy");
        s.complete(&running[0].lease, json!(null))
            .await
            .expect("complete");
        let mut elsewhere = params(10);
        elsewhere.queues = vec!["elsewhere".into()];
        assert!(s.dequeue(elsewhere).await.expect("dequeue").is_empty());
        match way {
            "cancelled" => assert!(s.cancel(j[1]).await.expect("cancel")),
            "deleted" => assert!(s.delete_job(j[1]).await.expect("delete")),
            _ => {
                let later = s.now().await.expect("now") + chrono::Duration::hours(1);
                assert!(s.reschedule_job(j[1], later).await.expect("reschedule"));
            }
        }
        let next = claim_all(&s).await;
        assert_eq!(ran(&next), vec![j[2]], "{way}: the job after it runs");
        s.complete(&next[0].lease, json!(null))
            .await
            .expect("complete");
    }
}

/// A key with room gives each claimer the key's first job among those it may take: a
/// claimer of some tasks is not held up by a first job of a task it does not take. And a
/// raised limit lets as many more jobs of the key start.
pub async fn a_key_with_room_serves_each_claimer_its_first_job<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let head = s.enqueue(keyed("mixed", 0)).await.expect("enqueue").id;
    let mut other = keyed("mixed", 1);
    other.task = "other".into();
    let other = s.enqueue(other).await.expect("enqueue").id;
    let mine = s.enqueue(keyed("mixed", 2)).await.expect("enqueue").id;
    let running = claim_all(&s).await;
    assert_eq!(ran(&running), vec![head]);
    assert!(claim_all(&s).await.is_empty(), "the key is busy");
    s.complete(&running[0].lease, json!(null))
        .await
        .expect("complete");
    // Claims of task `t` only: the key's first job is `other`'s, which they skip.
    let next = claim_all(&s).await;
    assert_eq!(ran(&next), vec![mine]);
    s.complete(&next[0].lease, json!(null))
        .await
        .expect("complete");
    let mut any_task = params(10);
    any_task.tasks = Vec::new();
    let last = s.dequeue(any_task).await.expect("dequeue");
    assert_eq!(ran(&last), vec![other]);

    // A raised limit: two more of a busy key start at once.
    let mut wide = Vec::new();
    for i in 0..5 {
        wide.push(s.enqueue(keyed("wide", i)).await.expect("enqueue").id);
    }
    assert_eq!(ran(&claim_all(&s).await), vec![wide[0]]);
    assert!(claim_all(&s).await.is_empty(), "the key is busy");
    Queue::new(s.clone())
        .set_key_limit("wide", 3)
        .await
        .expect("limit");
    assert_eq!(ran(&claim_all(&s).await), vec![wide[1], wide[2]]);
    assert!(claim_all(&s).await.is_empty(), "three run: the limit");
}

fn in_queue(queue: &str, payload: i64) -> NewJob {
    let mut j = NewJob::new("t", json!(payload));
    j.queue = queue.into();
    j
}

/// A queue's rate limit caps its starts per window, however many claimers race; the
/// window reopens after its period (by the storage clock); other queues are not held
/// back, also in a claim naming several queues; clearing the limit lifts it.
pub async fn queue_rate_limit_caps_starts_per_window<H: ConformanceHarness>(h: &H) {
    let s = h.storage();
    let queue = Queue::new(s.clone());
    let hour = Duration::from_secs(3600);
    queue
        .set_queue_rate_limit("default", 2, hour)
        .await
        .expect("limit");
    let mut limited = Vec::new();
    for i in 0..6 {
        limited.push(s.enqueue(in_queue("default", i)).await.expect("enqueue").id);
    }
    let free = s.enqueue(in_queue("free", 9)).await.expect("enqueue").id;
    let limits = queue.queue_rate_limits().await.expect("limits");
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0].0, "default");
    assert_eq!((limits[0].1.max_starts, limits[0].1.period), (2, hour));

    let first = claim_all(&s).await;
    assert_eq!(
        ids(&first),
        vec![limited[0], limited[1]],
        "two starts per hour"
    );
    // Finishing frees no start: the window counts starts, not running jobs.
    for c in &first {
        s.complete(&c.lease, json!(null)).await.expect("complete");
    }
    assert!(claim_all(&s).await.is_empty());
    h.advance(Duration::from_secs(1800)).await;
    assert!(claim_all(&s).await.is_empty(), "half an hour: same window");

    // A claim naming several queues takes the unlimited one and nothing of the other.
    let mut both = params(10);
    both.queues = vec!["default".into(), "free".into()];
    let got = s.dequeue(both.clone()).await.expect("dequeue");
    assert_eq!(ids(&got), vec![free]);

    h.advance(Duration::from_secs(1801)).await;
    let second = s.dequeue(both).await.expect("dequeue");
    assert_eq!(
        ids(&second),
        vec![limited[2], limited[3]],
        "a new window: two more"
    );
    assert!(claim_all(&s).await.is_empty());

    queue
        .clear_queue_rate_limit("default")
        .await
        .expect("clear");
    assert!(queue.queue_rate_limits().await.expect("limits").is_empty());
    assert_eq!(ids(&claim_all(&s).await), vec![limited[4], limited[5]]);

    for (q, n, period) in [
        ("default", 0, hour),
        ("default", 1, Duration::ZERO),
        ("bad queue", 1, hour),
    ] {
        assert!(
            queue.set_queue_rate_limit(q, n, period).await.is_err(),
            "{q:?} {n} {period:?}"
        );
    }
}
