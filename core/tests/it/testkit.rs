//! The test kit for users (`durable_jobs::testing::kit`): runs on virtual time, the
//! enqueue assertions, inline mode and `perform_job`; and worker timers that follow an
//! injected clock. No test here waits in real time for virtual time to pass: each would
//! hang (and fail at its guard) or fail its clock reading if the clock were not followed.
//!
//! Every case runs on each backend whose time comes from a manual clock: memory and a
//! SQLite file. (PostgreSQL reads the server's `now()`, which no test clock moves.)

use durable_jobs::testing::kit::{JobMatcher, KitError, TestKit};
use durable_jobs::{
    DynStorage, Error, Event, JobContext, JobOptions, JobStatus, ManualClock, Queue, RetryPolicy,
    Schedule, Storage, StorageCall, StorageLayer, TaskError, Worker, WorkerOptions,
};
use durable_jobs_memory::MemoryStorage;
use durable_jobs_sqlite::{SqliteOptions, SqliteStorage};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A fresh storage on a manual clock, and what to close when the case ends.
struct Backend {
    clock: ManualClock,
    storage: DynStorage,
    sqlite: Option<(SqliteStorage, tempfile::TempDir)>,
}

impl Backend {
    fn memory() -> Self {
        let clock = ManualClock::new();
        Backend {
            storage: Arc::new(MemoryStorage::with_clock(clock.clone())),
            clock,
            sqlite: None,
        }
    }

    async fn sqlite() -> Self {
        let clock = ManualClock::new();
        let dir = tempfile::Builder::new()
            .prefix("durable-jobs-testkit-")
            .tempdir()
            .expect("create a temporary directory");
        let db = SqliteStorage::open_with(
            dir.path().join("jobs.db"),
            SqliteOptions::new().manual_clock(clock.clone()),
        )
        .await
        .expect("open sqlite storage");
        Backend {
            storage: Arc::new(db.clone()),
            clock,
            sqlite: Some((db, dir)),
        }
    }

    /// A kit on this backend.
    fn kit(&self) -> TestKit {
        TestKit::new(self.storage.clone(), self.clock.clone())
    }

    async fn close(self) {
        if let Some((db, dir)) = self.sqlite {
            db.close().await;
            dir.close().expect("remove the temporary directory");
        }
    }
}

/// One `#[tokio::test]` per case and backend: `memory::case` and `sqlite::case`.
macro_rules! on_clocked_backends {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::Backend::memory();
                    super::$case(&b).await;
                    b.close().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::Backend::sqlite().await;
                    super::$case(&b).await;
                    b.close().await;
                }
            )*
        }
    };
}

on_clocked_backends!(
    week_long_workflow_runs_on_virtual_time,
    signal_timeout_fires_at_its_deadline_when_nobody_signals,
    run_until_idle_leaves_a_job_waiting_for_a_signal_alone,
    run_for_fires_each_schedule_tick_and_stops_at_its_bound,
    a_job_that_never_settles_is_an_error_not_a_hang,
    inline_mode_runs_the_job_before_enqueue_returns,
    perform_job_returns_what_the_handler_returned,
    enqueue_assertions_match_and_show_what_was_enqueued,
    scheduler_passes_follow_the_workers_clock,
    heartbeats_follow_the_workers_clock,
    a_dead_workers_job_runs_again_when_its_lease_expires,
    named_worker_queues_limit_what_runs,
);

#[tokio::test]
async fn memory_storage_makes_a_kit_on_its_own_clock() {
    let kit = MemoryStorage::test_kit();
    kit.queue()
        .register("nap", |ctx: JobContext, (): ()| async move {
            ctx.sleep(DAY).await?;
            Ok::<_, TaskError>(())
        });
    let job = kit
        .enqueue("nap", &(), JobOptions::new().delay(HOUR))
        .await
        .expect("enqueue");
    let report = kit.run_until_idle().await.expect("run");
    assert_eq!(report.virtual_elapsed(), HOUR + DAY);
    assert_eq!(
        kit.job(job.id).await.expect("job").status,
        JobStatus::Completed
    );
}

/// Counts calls; shared between a test and its handlers.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);

impl Counter {
    fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A week-long order: reserve (a step), two days' sleep, a charge that fails twice and
/// is retried with an hour's backoff and more, a wait for a `shipped` signal of up to a
/// week, then four days' sleep before the review request.
fn register_order(kit: &TestKit, reserved: &Counter, charged: &Counter) {
    let queue = kit.queue();
    queue.set_retry_policy(
        "order",
        RetryPolicy::exponential(HOUR, DAY).with_jitter(0.0),
    );
    let charges = charged.clone();
    queue.register("charge", move |_ctx: JobContext, cents: u64| {
        let charges = charges.clone();
        async move {
            if charges.bump() < 3 {
                return Err(TaskError::retry("card network unavailable"));
            }
            Ok::<_, TaskError>(format!("charged {cents}"))
        }
    });
    let reserves = reserved.clone();
    queue.register("order", move |ctx: JobContext, cents: u64| {
        let reserves = reserves.clone();
        async move {
            ctx.step("reserve", move |_| async move {
                reserves.bump();
                Ok::<_, TaskError>(())
            })
            .await?;
            ctx.sleep(2 * DAY).await?;
            let receipt: String = ctx.call("charge", &cents).await?;
            let tracking: Option<String> = ctx.wait_for_signal_timeout("shipped", 7 * DAY).await?;
            ctx.sleep(4 * DAY).await?;
            Ok::<_, TaskError>(json!({ "receipt": receipt, "tracking": tracking }))
        }
    });
}

async fn week_long_workflow_runs_on_virtual_time(b: &Backend) {
    let kit = b.kit();
    let (reserved, charged) = (Counter::default(), Counter::default());
    register_order(&kit, &reserved, &charged);
    let start = kit.now();
    let id = kit
        .queue()
        .enqueue("order", &1299u64, JobOptions::new().retries(5))
        .await
        .expect("enqueue");

    // Three days in: slept two days, charged after two retries (1 h, then 2 h backoff),
    // and now waits for the signal.
    let first = kit.run_for(3 * DAY).await.expect("run three days");
    assert_eq!(kit.now() - start, chrono::Duration::days(3));
    assert_eq!(first.virtual_elapsed(), 3 * DAY);
    assert_eq!(kit.job(id).await.expect("job").status, JobStatus::Waiting);
    assert_eq!(
        charged.get(),
        3,
        "two failed charges and one that succeeded"
    );
    assert_eq!(first.work.retried, 2);
    // Real work bounded by count: a jump per timer (sleep, two backoffs), no polling.
    assert_eq!(first.jumps, 3, "{first:?}");

    kit.queue()
        .signal(id, "shipped", &"TRACK-1")
        .await
        .expect("signal");
    let rest = kit.run_until_idle().await.expect("run to the end");
    let job = kit.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    assert_eq!(
        job.result,
        Some(json!({"receipt": "charged 1299", "tracking": "TRACK-1"}))
    );
    // Signalled on day 3, then four days' sleep: a week of virtual time in all.
    assert_eq!(kit.now() - start, chrono::Duration::days(7));
    assert_eq!(rest.jumps, 1, "{rest:?}");
    assert_eq!(
        reserved.get(),
        1,
        "the step ran once across every retry and wake"
    );
    assert_eq!(
        charged.get(),
        3,
        "the charge's checkpoint holds on later runs"
    );
}

async fn signal_timeout_fires_at_its_deadline_when_nobody_signals(b: &Backend) {
    let kit = b.kit();
    let (reserved, charged) = (Counter::default(), Counter::default());
    register_order(&kit, &reserved, &charged);
    let start = kit.now();
    let id = kit
        .queue()
        .enqueue("order", &5u64, JobOptions::new().retries(5))
        .await
        .expect("enqueue");
    kit.run_until_idle().await.expect("run");
    let job = kit.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.result,
        Some(json!({"receipt": "charged 5", "tracking": null}))
    );
    // 2 days' sleep + 3 h of backoff + the 7-day timeout from the wait's first run + 4 days.
    let expected = chrono::Duration::days(13) + chrono::Duration::hours(3);
    assert_eq!(kit.now() - start, expected);
}

async fn run_until_idle_leaves_a_job_waiting_for_a_signal_alone(b: &Backend) {
    let kit = b.kit();
    kit.queue()
        .register("await_approval", |ctx: JobContext, (): ()| async move {
            let ok: bool = ctx.wait_for_signal("approved").await?;
            Ok::<_, TaskError>(ok)
        });
    let id = kit
        .queue()
        .enqueue("await_approval", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let start = kit.now();
    let report = kit.run_until_idle().await.expect("run");
    assert_eq!(kit.job(id).await.expect("job").status, JobStatus::Waiting);
    assert_eq!((report.jumps, kit.now()), (0, start), "no timer to jump to");
    kit.queue()
        .signal(id, "approved", &true)
        .await
        .expect("signal");
    kit.run_until_idle().await.expect("run");
    assert_eq!(kit.job(id).await.expect("job").result, Some(json!(true)));
}

async fn run_for_fires_each_schedule_tick_and_stops_at_its_bound(b: &Backend) {
    let kit = b.kit();
    let runs = Counter::default();
    let r = runs.clone();
    kit.queue()
        .register("hourly", move |_ctx: JobContext, (): ()| {
            let r = r.clone();
            async move {
                r.bump();
                Ok::<_, TaskError>(())
            }
        });
    kit.queue()
        .add_schedule("hourly", Schedule::every(HOUR).task("hourly", &()))
        .await
        .expect("add schedule");
    let start = kit.now();
    let report = kit.run_for(DAY).await.expect("run a day");
    assert_eq!(runs.get(), 24, "one run per hourly tick in a day");
    assert_eq!(report.work.completed, 24);
    assert_eq!(kit.now() - start, chrono::Duration::days(1));
    // Schedules never end, so an unbounded run ignores them and does not jump.
    let idle = kit.run_until_idle().await.expect("run until idle");
    assert_eq!((idle.jumps, runs.get()), (0, 24));
}

async fn a_job_that_never_settles_is_an_error_not_a_hang(b: &Backend) {
    let kit = b.kit().max_jumps(20);
    kit.queue()
        .register("flaky", |_ctx: JobContext, (): ()| async move {
            Err::<(), _>(TaskError::retry_after(HOUR, "still down"))
        });
    kit.queue()
        .enqueue("flaky", &(), JobOptions::new().retries(1_000))
        .await
        .expect("enqueue");
    match kit.run_until_idle().await {
        Err(KitError::NeverIdle { jumps: 20, .. }) => {}
        other => panic!("expected NeverIdle after 20 jumps, got {other:?}"),
    }
}

async fn inline_mode_runs_the_job_before_enqueue_returns(b: &Backend) {
    let kit = b.kit().inline(true);
    kit.queue()
        .register("add", |_ctx: JobContext, (a, b): (i64, i64)| async move {
            Ok::<_, TaskError>(a + b)
        });
    kit.queue()
        .register("signup", |ctx: JobContext, email: String| async move {
            ctx.queue()
                .enqueue(
                    "welcome",
                    &json!({"to": email, "lang": "en"}),
                    JobOptions::new().queue("mail"),
                )
                .await
                .map_err(TaskError::retry)?;
            Ok::<_, TaskError>(())
        });
    kit.queue()
        .register("welcome", |_ctx: JobContext, _mail: Value| async move {
            Err::<(), _>(TaskError::retry("smtp down"))
        });

    let job = kit
        .enqueue("add", &(2, 3), JobOptions::new())
        .await
        .expect("enqueue");
    assert_eq!(
        (job.status, job.result),
        (JobStatus::Completed, Some(json!(5)))
    );

    // What the job enqueues runs too, in its own queue; a failure is observable at once.
    kit.enqueue("signup", &"ada@example.com", JobOptions::new())
        .await
        .expect("enqueue");
    let welcome = kit
        .assert_enqueued(JobMatcher::task("welcome").queue("mail"))
        .await;
    assert_eq!(welcome.len(), 1);
    assert_eq!(welcome[0].status, JobStatus::Retrying);
    assert_eq!(welcome[0].last_error.as_deref(), Some("smtp down"));
    assert!(
        welcome[0].run_at > kit.now(),
        "the retry waits for its backoff"
    );

    // Without inline mode, enqueue only stores the job.
    let lazy = kit.clone().inline(false);
    let job = lazy
        .enqueue("add", &(1, 1), JobOptions::new())
        .await
        .expect("enqueue");
    assert_eq!(job.status, JobStatus::Pending);
}

async fn perform_job_returns_what_the_handler_returned(b: &Backend) {
    let kit = b.kit();
    kit.queue()
        .register("add", |_ctx: JobContext, (a, b): (i64, i64)| async move {
            Ok::<_, TaskError>(a + b)
        })
        .register("refuse", |_ctx: JobContext, why: String| async move {
            Err::<(), _>(TaskError::no_retry(why))
        })
        .register("explode", |_ctx: JobContext, (): ()| async move {
            if true {
                panic!("boom");
            }
            Ok::<_, TaskError>(())
        })
        .register("nap", |ctx: JobContext, (): ()| async move {
            ctx.sleep(DAY).await?;
            Ok::<_, TaskError>("rested")
        });

    assert_eq!(
        kit.perform_job("add", &(2, 3)).await.expect("perform").ok(),
        Some(json!(5))
    );
    let refused = kit
        .perform_job("refuse", &"no card")
        .await
        .expect("perform");
    assert_eq!(refused.expect_err("refused").message(), "no card");
    let exploded = kit.perform_job("explode", &()).await.expect("perform");
    assert!(exploded.expect_err("panicked").message().contains("boom"));
    kit.assert_enqueued(
        JobMatcher::task("refuse")
            .status(JobStatus::Failed)
            .matching("failed with `no card`", |j| {
                j.last_error.as_deref() == Some("no card")
            }),
    )
    .await;

    // A workflow that suspends comes back as a suspension; the kit's runs resume it.
    let napped = kit.perform_job("nap", &()).await.expect("perform");
    assert!(napped.expect_err("suspended").is_suspend());
    kit.run_until_idle().await.expect("run");
    let nap = kit.assert_enqueued("nap").await;
    assert_eq!(nap[0].result, Some(json!("rested")));

    // Bad input is a typed error, as at enqueue.
    assert!(matches!(
        kit.perform_job("missing", &()).await,
        Err(KitError::Engine(Error::UnknownTask(_)))
    ));
    assert!(matches!(
        kit.perform_job("add", &"not a pair").await,
        Err(KitError::Engine(Error::InvalidPayload { .. }))
    ));
}

async fn enqueue_assertions_match_and_show_what_was_enqueued(b: &Backend) {
    let kit = b.kit();
    kit.queue()
        .register("send_email", |_ctx: JobContext, _mail: Value| async move {
            Ok::<_, TaskError>(())
        });
    let mail = json!({"to": "ada@example.com", "template": {"name": "welcome", "lang": "en"}});
    kit.queue()
        .enqueue(
            "send_email",
            &mail,
            JobOptions::new().queue("mail").priority(7),
        )
        .await
        .expect("enqueue");

    let found = kit
        .assert_enqueued(
            JobMatcher::task("send_email")
                .queue("mail")
                .payload(json!({"template": {"name": "welcome"}}))
                .status(JobStatus::Pending)
                .matching("priority 7", |j| j.priority == 7),
        )
        .await;
    assert_eq!(found.len(), 1);
    kit.assert_not_enqueued(
        JobMatcher::task("send_email").payload(json!({"to": "bob@example.com"})),
    )
    .await;
    kit.assert_not_enqueued(JobMatcher::task("send_email").queue("default"))
        .await;
    assert_eq!(
        kit.enqueued_jobs(JobMatcher::any())
            .await
            .expect("list")
            .len(),
        1
    );

    // A failed assertion names what it looked for and lists what is there instead.
    let message = panic_message({
        let kit = kit.clone();
        tokio::spawn(async move {
            kit.assert_enqueued(
                JobMatcher::task("send_email").payload(json!({"to": "bob@example.com"})),
            )
            .await;
        })
    })
    .await;
    assert!(
        message.contains(r#"payload containing {"to":"bob@example.com"}"#),
        "{message}"
    );
    assert!(message.contains("ada@example.com"), "{message}");
    assert!(message.contains("queue `mail`"), "{message}");
    let message = panic_message({
        let kit = kit.clone();
        tokio::spawn(async move { kit.assert_not_enqueued("send_email").await })
    })
    .await;
    assert!(message.contains("found 1"), "{message}");
    assert!(message.contains("welcome"), "{message}");
}

/// The panic message of a spawned assertion that must fail.
async fn panic_message(task: tokio::task::JoinHandle<()>) -> String {
    let panic = task
        .await
        .expect_err("the assertion should fail")
        .into_panic();
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

/// Hang guard for waits on events: a wait that never ends would mean a timer followed
/// real time instead of the manual clock. Not a measure of speed.
const GUARD: Duration = Duration::from_secs(60);

async fn scheduler_passes_follow_the_workers_clock(b: &Backend) {
    let clock = b.clock.clone();
    let queue = Queue::new(b.storage.clone());
    queue.register("tick", |_ctx: JobContext, (): ()| async move {
        Ok::<_, TaskError>(())
    });
    queue
        .add_schedule("tick", Schedule::every(HOUR).task("tick", &()))
        .await
        .expect("add schedule");
    // An hour between passes and polls: on real time neither would come in this test.
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .clock(clock.clone())
            .scheduler_interval(HOUR)
            .poll_interval(HOUR),
    )
    .expect("worker");
    let mut events = queue.events();
    let stop = Arc::new(Notify::new());
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run_until(stop.notified()).await })
    };
    events
        .wait_for(|e| matches!(e, Event::WorkerStarted { .. }))
        .await
        .expect("started");
    clock.advance(HOUR);
    let done = tokio::time::timeout(
        GUARD,
        events.wait_for(|e| matches!(e, Event::Completed { task, .. } if task == "tick")),
    )
    .await;
    stop.notify_one();
    assert!(
        done.is_ok(),
        "the scheduler did not pass when its clock moved an hour"
    );
    run.await.expect("join").expect("worker run");
}

/// Tells a test when a heartbeat was written.
struct HeartbeatSeen(Arc<Notify>);

impl StorageLayer for HeartbeatSeen {
    fn on_call(&self, call: &StorageCall<'_>) {
        if call.operation.starts_with("heartbeat") && call.error.is_none() {
            self.0.notify_one();
        }
    }
}

async fn heartbeats_follow_the_workers_clock(b: &Backend) {
    let clock = b.clock.clone();
    let beat = Arc::new(Notify::new());
    let queue = Queue::with_layers(
        b.storage.clone(),
        vec![Arc::new(HeartbeatSeen(beat.clone()))],
    );
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    {
        let (started, release) = (started.clone(), release.clone());
        queue.register("long", move |_ctx: JobContext, (): ()| {
            let (started, release) = (started.clone(), release.clone());
            async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, TaskError>(())
            }
        });
    }
    let id = queue
        .enqueue("long", &(), JobOptions::new())
        .await
        .expect("enqueue");
    // A 30 s lease renewed every 10 s of the worker's clock.
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .clock(clock.clone())
            .lease_duration(Duration::from_secs(30))
            .heartbeat_interval(Duration::from_secs(10)),
    )
    .expect("worker");
    let stop = Arc::new(Notify::new());
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run_until(stop.notified()).await })
    };
    started.notified().await;
    // 20 s in, the heartbeat renews the lease to 50 s; 40 s in, it still holds.
    clock.advance(Duration::from_secs(20));
    let renewed = tokio::time::timeout(GUARD, beat.notified()).await;
    assert!(
        renewed.is_ok(),
        "no heartbeat when the clock passed its interval"
    );
    let mut events = queue.events();
    clock.advance(Duration::from_secs(20));
    release.notify_one();
    let done = tokio::time::timeout(
        GUARD,
        events.wait_for(|e| matches!(e, Event::Completed { job_id, .. } if *job_id == id)),
    )
    .await;
    stop.notify_one();
    let report = run.await.expect("join").expect("worker run");
    assert!(done.is_ok(), "the job did not complete");
    assert_eq!((report.completed, report.lost), (1, 0), "{report:?}");
}

async fn a_dead_workers_job_runs_again_when_its_lease_expires(b: &Backend) {
    let kit = b.kit();
    kit.queue()
        .register("work", |ctx: JobContext, (): ()| async move {
            Ok::<_, TaskError>(ctx.attempt())
        });
    let id = kit
        .queue()
        .enqueue("work", &(), JobOptions::new())
        .await
        .expect("enqueue");
    // A worker elsewhere claims the job with a 5-minute lease and dies holding it.
    let claimed = kit
        .queue()
        .storage()
        .dequeue(durable_jobs::DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["work".into()],
            limit: 1,
            lease_duration: Duration::from_secs(300),
            holder: "dead".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let report = kit.run_until_idle().await.expect("run");
    // The run jumped to the lease's expiry, swept it, and ran the second attempt.
    assert_eq!(
        report.virtual_elapsed(),
        Duration::from_secs(300),
        "{report:?}"
    );
    let job = kit.job(id).await.expect("job");
    assert_eq!(
        (job.status, job.result),
        (JobStatus::Completed, Some(json!(2)))
    );
}

async fn named_worker_queues_limit_what_runs(b: &Backend) {
    let kit = b
        .kit()
        .worker_options(WorkerOptions::new().queue("mail", 1));
    kit.queue()
        .register("noop", |_ctx: JobContext, (): ()| async move {
            Ok::<_, TaskError>(())
        });
    let mail = kit
        .queue()
        .enqueue("noop", &(), JobOptions::new().queue("mail"))
        .await
        .expect("enqueue");
    let other = kit
        .queue()
        .enqueue("noop", &(), JobOptions::new().queue("reports"))
        .await
        .expect("enqueue");
    kit.run_until_idle().await.expect("run");
    assert_eq!(
        kit.job(mail).await.expect("job").status,
        JobStatus::Completed
    );
    assert_eq!(
        kit.job(other).await.expect("job").status,
        JobStatus::Pending
    );
}
