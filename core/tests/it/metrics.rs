//! Metrics through the `metrics` facade, asserted with a recording recorder: values, not
//! just that the code runs.
//!
//! One recorder serves the whole test binary and every snapshot resets what it read, so
//! snapshots are merged into one shared tally, and each test uses its own queue names.

use super::setup;
use durable_jobs::ManualClock;
use durable_jobs::{JobOptions, NoRetry, TaskError, Worker, WorkerOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A metric's identity: kind, name and sorted labels.
type Id = (MetricKind, String, Vec<(String, String)>);

#[derive(Default)]
struct Tally {
    counters: HashMap<Id, u64>,
    gauges: HashMap<Id, f64>,
    histograms: HashMap<Id, Vec<f64>>,
}

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder is installed in this test binary");
        snapshotter
    })
}

fn tally() -> &'static Mutex<Tally> {
    static T: OnceLock<Mutex<Tally>> = OnceLock::new();
    T.get_or_init(Mutex::default)
}

/// Merges what the recorder holds into the tally.
fn collect() {
    let snap = snapshotter().snapshot().into_vec();
    let mut t = tally().lock().expect("tally lock");
    for (ck, _, _, value) in snap {
        let mut labels: Vec<(String, String)> = ck
            .key()
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        labels.sort();
        let id = (ck.kind(), ck.key().name().to_string(), labels);
        match value {
            DebugValue::Counter(n) => *t.counters.entry(id).or_default() += n,
            // Reading a gauge resets it; only a value set since the last read is news.
            DebugValue::Gauge(v) => {
                if v.into_inner() != 0.0 {
                    t.gauges.insert(id, v.into_inner());
                }
            }
            DebugValue::Histogram(vs) => t
                .histograms
                .entry(id)
                .or_default()
                .extend(vs.into_iter().map(|v| v.into_inner())),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn counter(name: &str, pairs: &[(&str, &str)]) -> u64 {
    collect();
    let id = (MetricKind::Counter, name.to_string(), labels(pairs));
    tally()
        .lock()
        .expect("tally")
        .counters
        .get(&id)
        .copied()
        .unwrap_or(0)
}

fn histogram(name: &str, pairs: &[(&str, &str)]) -> Vec<f64> {
    collect();
    let id = (MetricKind::Histogram, name.to_string(), labels(pairs));
    tally()
        .lock()
        .expect("tally")
        .histograms
        .get(&id)
        .cloned()
        .unwrap_or_default()
}

fn gauge(name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
    collect();
    let id = (MetricKind::Gauge, name.to_string(), labels(pairs));
    tally().lock().expect("tally").gauges.get(&id).copied()
}

#[tokio::test]
async fn job_counters_and_histograms_count_each_outcome() {
    snapshotter();
    let (queue, _clock) = setup();
    queue.register_fn("m_ok", |_: ()| async { Ok::<_, TaskError>(()) });
    queue.register_fn("m_fail", |_: ()| async {
        Err::<(), TaskError>(NoRetry("no").into())
    });
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = tries.clone();
    queue.register_fn("m_retry", move |_: ()| {
        let t = t.clone();
        async move {
            if t.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Err(TaskError::retry("once"))
            } else {
                Ok(())
            }
        }
    });
    queue.set_default_retry_policy(durable_jobs::RetryPolicy::exponential(
        Duration::ZERO,
        Duration::ZERO,
    ));
    let on = |q: &str| JobOptions::new().queue(q);
    for _ in 0..3 {
        queue
            .enqueue("m_ok", &(), on("mq1"))
            .await
            .expect("enqueue");
    }
    queue
        .enqueue("m_fail", &(), on("mq1"))
        .await
        .expect("enqueue");
    queue
        .enqueue("m_retry", &(), on("mq1"))
        .await
        .expect("enqueue");
    // A bulk enqueue counts every job it created.
    queue
        .enqueue_many("m_ok", &[(), ()], on("mq1"))
        .await
        .expect("enqueue_many");
    // A deduplicated enqueue creates nothing and counts nothing.
    queue
        .enqueue("m_ok", &(), on("mq1").dedupe_key("k"))
        .await
        .expect("enqueue");
    queue
        .enqueue("m_ok", &(), on("mq1").dedupe_key("k"))
        .await
        .expect("enqueue");

    let report = Worker::new(queue.clone(), WorkerOptions::new().queue("mq1", 4))
        .expect("worker")
        .drain()
        .await
        .expect("drain");
    assert_eq!((report.completed, report.failed, report.retried), (7, 1, 1));

    let ok = [("queue", "mq1"), ("task", "m_ok")];
    let fail = [("queue", "mq1"), ("task", "m_fail")];
    let retry = [("queue", "mq1"), ("task", "m_retry")];
    assert_eq!(counter("durable_jobs_jobs_enqueued_total", &ok), 6);
    assert_eq!(counter("durable_jobs_jobs_enqueued_total", &fail), 1);
    assert_eq!(counter("durable_jobs_jobs_started_total", &ok), 6);
    assert_eq!(counter("durable_jobs_jobs_completed_total", &ok), 6);
    assert_eq!(counter("durable_jobs_jobs_failed_total", &ok), 0);
    assert_eq!(counter("durable_jobs_jobs_failed_total", &fail), 1);
    assert_eq!(counter("durable_jobs_jobs_completed_total", &fail), 0);
    assert_eq!(counter("durable_jobs_jobs_started_total", &retry), 2);
    assert_eq!(counter("durable_jobs_jobs_retried_total", &retry), 1);
    assert_eq!(counter("durable_jobs_jobs_completed_total", &retry), 1);
    let durations = histogram("durable_jobs_job_duration_seconds", &ok);
    assert_eq!(durations.len(), 6, "one duration per attempt");
    assert!(
        durations.iter().all(|d| (0.0..5.0).contains(d)),
        "{durations:?}"
    );
    assert_eq!(histogram("durable_jobs_job_wait_seconds", &retry).len(), 2);
    // Storage calls are timed by operation.
    assert!(!histogram(
        "durable_jobs_storage_call_duration_seconds",
        &[("operation", "dequeue")]
    )
    .is_empty());
}

#[tokio::test]
async fn cancels_reclaims_and_sampled_gauges() {
    snapshotter();
    let (queue, clock) = setup();
    queue.register_fn("m_g", |_: ()| async { Ok::<_, TaskError>(()) });
    let on = JobOptions::new().queue("mq2");
    let cancelled = queue
        .enqueue("m_g", &(), on.clone())
        .await
        .expect("enqueue");
    assert!(queue.cancel(cancelled).await.expect("cancel"));
    let labels_g = [("queue", "mq2"), ("task", "m_g")];
    assert_eq!(counter("durable_jobs_jobs_cancelled_total", &labels_g), 1);

    // A job claimed by a worker that then died comes back through the sweep.
    queue
        .enqueue("m_g", &(), on.clone())
        .await
        .expect("enqueue");
    let claimed = queue
        .storage()
        .inner()
        .dequeue(durable_jobs::DequeueParams {
            queues: vec!["mq2".into()],
            tasks: vec!["m_g".into()],
            limit: 1,
            lease_duration: Duration::from_secs(30),
            holder: "dead".into(),
            forbidden_flags: vec![],
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    clock.advance(Duration::from_secs(31));
    for _ in 0..2 {
        queue
            .enqueue("m_g", &(), on.clone())
            .await
            .expect("enqueue");
    }
    let worker = std::sync::Arc::new(
        Worker::new(
            queue.clone(),
            WorkerOptions::new()
                .queue("mq2", 2)
                .metrics_interval(Duration::from_millis(10)),
        )
        .expect("worker"),
    );
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    // The sampler sets the gauges from one counts query per interval: wait for it to
    // see the three completed jobs and the cancelled one.
    let completed = [("queue", "mq2"), ("status", "completed")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gauge("durable_jobs_jobs", &completed) != Some(3.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge never showed 3 completed: {:?}",
            gauge("durable_jobs_jobs", &completed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        gauge(
            "durable_jobs_jobs",
            &[("queue", "mq2"), ("status", "cancelled")]
        ),
        Some(1.0)
    );
    worker.shutdown_handle().shutdown();
    run.await.expect("join").expect("run");
    assert_eq!(counter("durable_jobs_jobs_reclaimed_total", &labels_g), 1);
    assert_eq!(counter("durable_jobs_jobs_completed_total", &labels_g), 3);
}

/// Counts the `counts` calls a queue's storage answers, and wakes a waiter on each.
#[derive(Default)]
struct CountsCalls {
    n: std::sync::atomic::AtomicUsize,
    seen: tokio::sync::Notify,
}

impl durable_jobs::StorageLayer for CountsCalls {
    fn on_call(&self, call: &durable_jobs::StorageCall<'_>) {
        if call.operation == "counts" {
            self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.seen.notify_waiters();
        }
    }
}

/// A worker's first gauge sample comes at a random point of its first interval, not as
/// it starts: on a clock nobody moves, a worker that already ran a job has not counted;
/// once the clock passes the interval, it has. (The delay is exactly zero for one start
/// in 3.6 billion.)
#[tokio::test]
async fn the_first_sample_waits_a_random_part_of_the_first_interval() {
    let clock = ManualClock::new();
    let calls = Arc::new(CountsCalls::default());
    let queue = durable_jobs::Queue::with_layers(
        Arc::new(durable_jobs_memory::MemoryStorage::with_clock(
            clock.clone(),
        )),
        vec![calls.clone()],
    );
    let (ran_tx, mut ran) = tokio::sync::mpsc::unbounded_channel();
    queue.register_fn("m_first", move |_: ()| {
        let ran_tx = ran_tx.clone();
        async move {
            let _ = ran_tx.send(());
            Ok::<_, TaskError>(())
        }
    });
    let hour = Duration::from_secs(3600);
    let worker = Arc::new(
        Worker::new(
            queue.clone(),
            WorkerOptions::new()
                .queue("mfirst", 1)
                .metrics_interval(hour)
                .clock(clock.clone()),
        )
        .expect("worker"),
    );
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    queue
        .enqueue("m_first", &(), JobOptions::new().queue("mfirst"))
        .await
        .expect("enqueue");
    tokio::time::timeout(Duration::from_secs(30), ran.recv())
        .await
        .expect("the job ran")
        .expect("handler channel");
    assert_eq!(calls.n.load(std::sync::atomic::Ordering::SeqCst), 0);
    let counted = calls.seen.notified();
    clock.advance(hour);
    if calls.n.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::timeout(Duration::from_secs(30), counted)
            .await
            .expect("a sample once the first interval passed");
    }
    worker.shutdown_handle().shutdown();
    run.await.expect("join").expect("run");
}
