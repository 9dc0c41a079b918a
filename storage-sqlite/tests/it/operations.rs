//! Operations across connections: two storages on one file (as two processes would
//! share it) never run two jobs of one serial key at once, keep each key's order, and
//! advance a schedule's cursor once between them.

use crate::TempDb;
use durable_jobs::{
    AdvanceScheduleParams, Completion, DequeueParams, ManualClock, NewJob, Storage,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn params(limit: usize) -> DequeueParams {
    DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["t".into()],
        limit,
        lease_duration: Duration::from_secs(30),
        holder: "test".into(),
        forbidden_flags: Vec::new(),
    }
}

/// Four claim loops on two storages drain jobs of five serial keys (plus unkeyed jobs):
/// at no time do two jobs of one key run, and each key's jobs run in enqueue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_keys_hold_across_two_storages_on_one_file() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let a = db.open(&clock).await;
    let b = db.open(&clock).await;
    let keys = 5;
    let per_key = 40;
    let mut jobs = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            let mut j = NewJob::new("t", json!({ "key": k, "seq": i }));
            j.serial_key = Some(format!("key-{k}"));
            jobs.push(j);
        }
        jobs.push(NewJob::new("t", json!({ "free": i })));
    }
    a.enqueue_many(jobs).await.expect("enqueue");
    // Running jobs per key, and the sequence numbers each key ran in.
    let running: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let order: Arc<Mutex<HashMap<i64, Vec<i64>>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (running, order) = (running.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let got = s.dequeue(params(8)).await.expect("dequeue");
                if got.is_empty() {
                    // Another loop may hold the last job of a key; wait for it.
                    let busy = running.lock().expect("lock").values().any(|n| *n > 0);
                    if !busy {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                for c in &got {
                    if let Some(k) = c.job.payload.get("key").and_then(|k| k.as_i64()) {
                        let mut r = running.lock().expect("lock");
                        let n = r.entry(k).or_default();
                        *n += 1;
                        assert_eq!(*n, 1, "two jobs of key {k} run at once");
                        let seq = c.job.payload["seq"].as_i64().expect("seq");
                        order.lock().expect("lock").entry(k).or_default().push(seq);
                    }
                }
                let items: Vec<Completion> = got
                    .iter()
                    .map(|c| Completion {
                        lease: c.lease.clone(),
                        result: json!(null),
                    })
                    .collect();
                // Marked finished before the commit: a claim that sees the key free
                // can only come after this.
                for c in &got {
                    if let Some(k) = c.job.payload.get("key").and_then(|k| k.as_i64()) {
                        *running.lock().expect("lock").entry(k).or_default() -= 1;
                    }
                }
                let done = s.complete_many(items).await.expect("complete");
                assert!(done.iter().all(|r| r.is_ok()));
            }
        }));
    }
    for t in tasks {
        t.await.expect("claim loop");
    }
    let order = order.lock().expect("lock").clone();
    for k in 0..keys {
        let seqs = order.get(&k).cloned().unwrap_or_default();
        assert_eq!(seqs, (0..per_key).collect::<Vec<_>>(), "key {k} in order");
    }
    let counts = b.counts().await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].count, ((keys + 1) * per_key) as u64);
    a.close().await;
    b.close().await;
}

/// Two storages racing to advance one schedule: exactly one moves the cursor and
/// inserts the tick's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_cursor_moves_once_across_two_storages() {
    let db = TempDb::fresh();
    let clock = ManualClock::new();
    let a = db.open(&clock).await;
    let b = db.open(&clock).await;
    let now = a.now().await.expect("now");
    a.upsert_schedule("tick", json!({}), now)
        .await
        .expect("upsert");
    let mut tasks = Vec::new();
    for round in 0..20i64 {
        let from = now + chrono::Duration::seconds(round);
        let to = from + chrono::Duration::seconds(1);
        for s in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move {
                s.advance_schedule(AdvanceScheduleParams {
                    name: "tick",
                    from,
                    to,
                    jobs: vec![NewJob::new("t", json!(round))],
                })
                .await
                .expect("advance")
            }));
        }
        let mut won = 0;
        for t in tasks.drain(..) {
            if t.await.expect("task").is_some() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
    let rec = b.schedules().await.expect("schedules").remove(0);
    assert_eq!(rec.cursor, now + chrono::Duration::seconds(20));
    let jobs = a
        .list_jobs(durable_jobs::JobFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(jobs.len(), 20);
    assert_eq!(rec.last_job_id, jobs.last().map(|j| j.id));
    a.close().await;
    b.close().await;
}
