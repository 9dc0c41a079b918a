//! A storage seeded through the library with jobs in every status, a workflow with
//! checkpoints and children, workers alive and dead, a paused queue and schedules; the
//! dashboard served from it on a free local port, mounted under `/admin/jobs`.

use axum::Router;
use durable_jobs::storage::DequeueParams;
use durable_jobs::{
    FanOut, Job, JobContext, JobId, JobOptions, JobStatus, Queue, Schedule, Storage, TaskError,
    Worker, WorkerOptions, WorkerQueue, WorkerRecord,
};
use durable_jobs_dashboard::DashboardOptions;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where the tests mount the dashboard, as an application would.
pub const MOUNT: &str = "/admin/jobs";

/// A payload that would run script if it were not escaped.
pub const SCRIPT_NOTE: &str = "<script>window.__xss = 1; alert('xss')</script>";
/// The same through an event handler attribute.
pub const IMG_NOTE: &str = "<img src=x onerror=\"window.__xss = 2; alert('img')\">";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The ids of the seeded jobs.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub completed: JobId,
    pub failed: JobId,
    pub retrying: JobId,
    pub pending: JobId,
    pub running: JobId,
    pub waiting: JobId,
    pub cancelled: JobId,
    pub workflow: JobId,
    pub script: JobId,
}

enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema(Option<durable_jobs_postgres::testing::TestSchema>),
}

/// A seeded storage with the dashboard served from it.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub queue: Queue,
    pub seeded: Seeded,
    /// The dashboard with actions, mounted under [`MOUNT`].
    pub addr: SocketAddr,
    keep: Keep,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Fixture {
    pub fn new(backend: Backend) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (storage, keep): (durable_jobs::DynStorage, Keep) = rt.block_on(async {
            match backend {
                Backend::Sqlite => {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let storage =
                        durable_jobs_sqlite::SqliteStorage::open(dir.path().join("jobs.db"))
                            .await
                            .expect("open the SQLite file");
                    (Arc::new(storage) as _, Keep::Dir(dir))
                }
                Backend::Postgres => {
                    let schema = durable_jobs_postgres::testing::TestSchema::new()
                        .await
                        .expect("a fresh PostgreSQL schema");
                    (
                        Arc::new(schema.storage().clone()) as _,
                        Keep::Schema(Some(schema)),
                    )
                }
            }
        });
        let queue = Queue::new(storage);
        let seeded = rt.block_on(seed(&queue));
        let mut fixture = Fixture {
            rt,
            queue,
            seeded,
            addr: ([127, 0, 0, 1], 0).into(),
            keep,
            stops: Vec::new(),
        };
        fixture.addr = fixture.serve(DashboardOptions::default());
        fixture
    }

    /// Serves another dashboard over the same queue with `options`, mounted under
    /// [`MOUNT`] in an app that has a page of its own at `/`.
    pub fn serve(&mut self, options: DashboardOptions) -> SocketAddr {
        let app = Router::new()
            .route(
                "/",
                axum::routing::get(|| async { "the application's own page" }),
            )
            .nest(
                MOUNT,
                durable_jobs_dashboard::router_with(self.queue.clone(), options),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = self.rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a free local port");
            let addr = listener.local_addr().expect("the bound address");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            addr
        });
        self.stops.push(stop);
        addr
    }

    /// The address of a dashboard page, e.g. `url(addr, "/jobs/3")`.
    pub fn url_at(addr: SocketAddr, path: &str) -> String {
        if path == "/" {
            format!("http://{addr}{MOUNT}")
        } else {
            format!("http://{addr}{MOUNT}{path}")
        }
    }

    /// A page of the main dashboard.
    pub fn url(&self, path: &str) -> String {
        Self::url_at(self.addr, path)
    }

    /// A job as stored now.
    pub fn job(&self, id: JobId) -> Job {
        self.rt
            .block_on(self.queue.get_job(id))
            .expect("read the job")
            .expect("the job exists")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        if let Keep::Schema(schema) = &mut self.keep {
            if let Some(schema) = schema.take() {
                let _ = self.rt.block_on(schema.drop_schema());
            }
        }
    }
}

fn register(queue: &Queue) {
    queue.register("send_email", |_ctx: JobContext, to: String| async move {
        Ok::<_, TaskError>(format!("sent to {to}"))
    });
    queue.register("charge", |_ctx: JobContext, cents: u64| async move {
        Err::<(), TaskError>(TaskError::no_retry(format!(
            "card declined for {cents} cents"
        )))
    });
    queue.register(
        "sync_inventory",
        |_ctx: JobContext, _args: Value| async move {
            Err::<(), TaskError>(TaskError::retry_after(
                Duration::from_secs(3600),
                "warehouse API timed out",
            ))
        },
    );
    queue.register("render", |_ctx: JobContext, doc: Value| async move {
        Ok::<_, TaskError>(doc)
    });
    queue.register("reserve", |_ctx: JobContext, order: u64| async move {
        Ok::<_, TaskError>(json!({"order": order, "reserved": true}))
    });
    queue.register("notify", |_ctx: JobContext, who: String| async move {
        Ok::<_, TaskError>(format!("notified {who}"))
    });
    queue.register("checkout", |ctx: JobContext, order: u64| async move {
        let reservation: Value = ctx.call("reserve", &order).await?;
        let receipt: String = ctx
            .step("charge_card", move |_ctx| async move {
                Ok::<_, TaskError>(format!("receipt-{order}"))
            })
            .await?;
        ctx.progress(&json!({"step": "charged", "order": order}))
            .await?;
        let notified: Vec<Result<String, String>> = ctx
            .fan_out(
                "notify",
                ["customer", "warehouse"],
                JobOptions::new(),
                FanOut::CollectAll,
            )
            .await?;
        Ok::<_, TaskError>(json!({
            "reservation": reservation,
            "receipt": receipt,
            "notified": notified.len(),
        }))
    });
    queue.register(
        "await_shipment",
        |ctx: JobContext, _order: u64| async move {
            let tracking: String = ctx.wait_for_signal("shipped").await?;
            Ok::<_, TaskError>(tracking)
        },
    );
}

async fn seed(queue: &Queue) -> Seeded {
    register(queue);
    let later = || JobOptions::new().delay(Duration::from_secs(3600));
    let q = queue;
    let completed = q
        .enqueue(
            "send_email",
            &"ada@example.com",
            JobOptions::new().tag("vip"),
        )
        .await
        .expect("enqueue");
    for to in ["bob@example.com", "cy@example.com", "dee@example.com"] {
        q.enqueue("send_email", &to, JobOptions::new().queue("emails"))
            .await
            .expect("enqueue");
    }
    let failed = q
        .enqueue("charge", &1299u64, JobOptions::new().tag("vip"))
        .await
        .expect("enqueue");
    let retrying = q
        .enqueue(
            "sync_inventory",
            &json!({"warehouse": "north"}),
            JobOptions::new().retries(5),
        )
        .await
        .expect("enqueue");
    let waiting = q
        .enqueue("await_shipment", &42u64, JobOptions::new())
        .await
        .expect("enqueue");
    let workflow = q
        .enqueue("checkout", &42u64, JobOptions::new().tag("vip"))
        .await
        .expect("enqueue");
    let script = q
        .enqueue(
            "render",
            &json!({"note": SCRIPT_NOTE, "avatar": IMG_NOTE}),
            JobOptions::new().queue("media"),
        )
        .await
        .expect("enqueue");

    let worker = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .name("seed-worker")
            .queue("default", 4)
            .queue("emails", 2)
            .queue("media", 2)
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("a worker");
    worker.drain().await.expect("drain the seeded jobs");

    // Enqueued after the drain so it stays as it is.
    let pending = q
        .enqueue("send_email", &"later@example.com", later())
        .await
        .expect("enqueue");
    let cancelled = q
        .enqueue("send_email", &"nobody@example.com", later())
        .await
        .expect("enqueue");
    assert!(q.cancel(cancelled).await.expect("cancel"), "cancelled");
    let running = q
        .enqueue(
            "send_email",
            &"slow@example.com",
            JobOptions::new().queue("slow"),
        )
        .await
        .expect("enqueue");
    let claimed = q
        .storage()
        .dequeue(DequeueParams {
            queues: vec!["slow".into()],
            tasks: vec!["send_email".into()],
            limit: 1,
            lease_duration: Duration::from_secs(3600),
            holder: "web-1".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim the running job");
    assert_eq!(claimed.len(), 1, "one job claimed");

    for (name, lease_ms) in [("web-1", 3_600_000), ("old-box", 1)] {
        let now = chrono::Utc::now();
        q.storage()
            .register_worker(WorkerRecord {
                name: name.into(),
                host: format!("{name}.internal"),
                pid: 4242,
                queues: vec![WorkerQueue {
                    name: "default".into(),
                    concurrency: 8,
                }],
                version: "0.1.0".into(),
                started_at: now,
                last_seen: now,
                lease_ms,
            })
            .await
            .expect("register a worker");
    }
    q.pause_queue("media").await.expect("pause a queue");
    q.add_schedule(
        "nightly-digest",
        Schedule::cron("0 3 * * *").task("send_email", &"digest@example.com"),
    )
    .await
    .expect("add a schedule");
    q.add_schedule(
        "inventory-sync",
        Schedule::every(Duration::from_secs(900)).task("sync_inventory", &json!({})),
    )
    .await
    .expect("add a schedule");

    let seeded = Seeded {
        completed,
        failed,
        retrying,
        pending,
        running,
        waiting,
        cancelled,
        workflow,
        script,
    };
    for (id, status) in [
        (seeded.completed, JobStatus::Completed),
        (seeded.failed, JobStatus::Failed),
        (seeded.retrying, JobStatus::Retrying),
        (seeded.pending, JobStatus::Pending),
        (seeded.running, JobStatus::Running),
        (seeded.waiting, JobStatus::Waiting),
        (seeded.cancelled, JobStatus::Cancelled),
        (seeded.workflow, JobStatus::Completed),
        (seeded.script, JobStatus::Completed),
    ] {
        let job = q.get_job(id).await.expect("read").expect("exists");
        assert_eq!(job.status, status, "seeded job {id} ({})", job.task);
    }
    seeded
}
