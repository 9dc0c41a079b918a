//! A PostgreSQL outage, on a throwaway cluster this test starts itself (never the shared
//! server): storage errors say "unavailable", the worker's claim backoff grows instead of
//! retrying every 100 ms forever, and once the server is back the same worker, never
//! restarted, completes jobs again.

use durable_jobs::{
    Event, JobOptions, Queue, Storage, StorageErrorKind, TaskError, Worker, WorkerOptions,
    WorkerState,
};
use durable_jobs_postgres::testing::ThrowawayCluster;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The `retry_in` of each "claim failed; retrying" warning, in order.
#[derive(Clone, Default)]
struct ClaimRetries {
    waits: Arc<Mutex<Vec<Duration>>>,
    seen: Arc<Notify>,
}

struct Fields {
    message: String,
    retry_in: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "retry_in" => self.retry_in = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Parses a `Duration`'s debug form (`812.5ms`, `1.2s`, `950µs`).
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

impl<S: tracing::Subscriber> Layer<S> for ClaimRetries {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields {
            message: String::new(),
            retry_in: None,
        };
        event.record(&mut f);
        if f.message.contains("claim failed; retrying") {
            if let Some(wait) = f.retry_in.as_deref().and_then(parse_debug_duration) {
                self.waits.lock().expect("waits").push(wait);
                self.seen.notify_waiters();
            }
        }
    }
}

impl ClaimRetries {
    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Duration> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.seen.notified();
            tokio::pin!(seen);
            seen.as_mut().enable();
            {
                let waits = self.waits.lock().expect("waits");
                if waits.len() >= n {
                    return waits.clone();
                }
            }
            if tokio::time::timeout_at(deadline, seen).await.is_err() {
                panic!(
                    "fewer than {n} claim retries within {limit:?}: {:?}",
                    self.waits.lock().expect("waits")
                );
            }
        }
    }
}

async fn wait_completed(events: &mut durable_jobs::EventStream, ids: &[i64]) {
    let mut left: Vec<i64> = ids.to_vec();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while !left.is_empty() {
            match events
                .wait_for(|e| matches!(e, Event::Completed { .. }))
                .await
            {
                Some(e) => left.retain(|id| Some(*id) != e.job_id()),
                None => return,
            }
        }
    })
    .await;
    assert!(
        done.is_ok() && left.is_empty(),
        "jobs not completed: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_out_a_server_outage() {
    let retries = ClaimRetries::default();
    // Global: the worker's tasks run on the runtime's threads. This binary holds this one
    // test, so nothing else sees the subscriber.
    let subscriber = tracing_subscriber::registry().with(retries.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let mut cluster = ThrowawayCluster::start().expect("start a throwaway PostgreSQL cluster");
    let storage = PostgresStorage::connect_with(
        cluster.url(),
        PostgresOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    storage.migrate().await.expect("migrate");
    let queue = Queue::new(Arc::new(storage));
    queue.register("t", |_ctx: durable_jobs::JobContext, n: u32| async move {
        Ok::<_, TaskError>(n)
    });
    let worker = Arc::new(
        Worker::new(
            queue.clone(),
            WorkerOptions::new()
                .queue("default", 4)
                .poll_interval(Duration::from_millis(50))
                // Only the claim loop retries here, so its backoff is what the test sees.
                .lease_duration(Duration::from_secs(300))
                .heartbeat_interval(Duration::from_secs(100))
                .metrics_interval(Duration::ZERO),
        )
        .expect("worker"),
    );
    let mut events = queue.events();
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    let mut before = Vec::new();
    for n in 0..5 {
        before.push(
            queue
                .enqueue("t", &n, JobOptions::new())
                .await
                .expect("enqueue"),
        );
    }
    wait_completed(&mut events, &before).await;

    cluster.stop().expect("stop the server");
    let err = queue
        .get_job(before[0])
        .await
        .expect_err("the server is down");
    assert_eq!(
        err.storage_kind(),
        Some(StorageErrorKind::Unavailable),
        "an outage is reported as unavailable: {err}"
    );
    assert!(err.is_transient());

    // The claim loop backs off: each wait's step doubles (jittered to between half and
    // all of it), so the fourth wait is at least 400 ms where a fixed retry stays at 100.
    let waits = retries.wait_for(4, Duration::from_secs(60)).await;
    assert!(waits[0] <= Duration::from_millis(100), "{waits:?}");
    assert!(
        waits[3] >= Duration::from_millis(400),
        "backoff grows: {waits:?}"
    );
    let health = worker.health();
    assert_eq!(
        health.state,
        WorkerState::Running,
        "the worker keeps running"
    );
    assert!(health.storage_failures >= 4, "{health:?}");

    cluster.start_again().expect("restart the server");
    // The same worker, never restarted, claims and completes new jobs.
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for n in 0..5 {
        loop {
            match queue.enqueue("t", &n, JobOptions::new()).await {
                Ok(id) => {
                    after.push(id);
                    break;
                }
                // The pool reconnects on its own; until then, enqueues fail as unavailable.
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("enqueue after the restart: {e}"),
            }
        }
    }
    wait_completed(&mut events, &after).await;
    assert_eq!(worker.health().storage_failures, 0, "recovered");
    worker.shutdown_handle().shutdown();
    run.await.expect("join").expect("worker run");
}
