//! Helpers shared by the engine conformance files: a queue and worker on the harness's
//! storage, counters of side effects, and waits on events and job state.

use super::ConformanceHarness;
use crate::{Event, EventStream, JobId, JobStatus, Queue, RetryPolicy, Worker, WorkerOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a test waits for an event or a state before it fails instead of hanging.
/// Generous: a loaded CI machine, not the code under test, decides how long these take.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// How long a test watches for something that must not happen (a second attempt starting
/// beside a first one). A correct build passes however long it is; only catching a broken
/// one depends on it, and it is many times the few milliseconds that takes.
pub(super) const WATCH_WINDOW: Duration = Duration::from_millis(300);

/// A blocking handler's side of a gate: the first run of `slow` blocks until the test
/// opens the gate; every run counts itself and notes whether another run was inside at
/// the same time.
#[derive(Clone, Default)]
pub(super) struct BlockingProbe {
    running: Arc<std::sync::atomic::AtomicUsize>,
    starts: Arc<std::sync::atomic::AtomicUsize>,
    overlapped: Arc<std::sync::atomic::AtomicBool>,
}

impl BlockingProbe {
    /// Registers task `slow` as a blocking handler; returns the gate's opener.
    pub(super) fn register(&self, q: &Queue) -> std::sync::mpsc::Sender<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let probe = self.clone();
        q.register_blocking("slow", move |_: ()| {
            if probe.running.fetch_add(1, SeqCst) > 0 {
                probe.overlapped.store(true, SeqCst);
            }
            if probe.starts.fetch_add(1, SeqCst) == 0 {
                let _ = gate.lock().expect("gate lock").recv();
            }
            probe.running.fetch_sub(1, SeqCst);
            Ok::<_, crate::TaskError>(())
        });
        open
    }
    /// How many runs started.
    pub(super) fn starts(&self) -> usize {
        self.starts.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// True when two runs were inside at once.
    pub(super) fn overlapped(&self) -> bool {
        self.overlapped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Counts side effects per name, to prove what ran how often.
#[derive(Clone, Default)]
pub(super) struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    /// Counts one run of `name` and returns the count so far.
    pub(super) fn hit(&self, name: &str) -> u32 {
        let mut m = self.0.lock().expect("runs lock");
        let n = m.entry(name.into()).or_default();
        *n += 1;
        *n
    }
    /// How often `name` ran.
    pub(super) fn get(&self, name: &str) -> u32 {
        self.0
            .lock()
            .expect("runs lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// A queue on the harness's storage whose retries come at once, so a test needs no clock
/// to see them.
pub(super) fn queue<H: ConformanceHarness>(h: &H) -> Queue {
    let q = Queue::new(h.storage());
    q.set_default_retry_policy(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO));
    q
}

/// A queue on the harness's storage with the default retry policy (backoff with jitter).
pub(super) fn plain_queue<H: ConformanceHarness>(h: &H) -> Queue {
    Queue::new(h.storage())
}

/// A worker on the default queue.
pub(super) fn worker(q: &Queue, concurrency: usize) -> Worker {
    Worker::new(
        q.clone(),
        WorkerOptions::new().queue("default", concurrency),
    )
    .expect("worker options")
}

/// The job, which must exist.
pub(super) async fn job(q: &Queue, id: JobId) -> crate::Job {
    q.get_job(id).await.expect("get_job").expect("job exists")
}

/// The job's status.
pub(super) async fn status(q: &Queue, id: JobId) -> JobStatus {
    job(q, id).await.status
}

/// Waits for the first event matching `pred`, failing after [`PATIENCE`] so a missing
/// event fails the test instead of hanging it.
pub(super) async fn expect_event(
    events: &mut EventStream,
    what: &str,
    pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(PATIENCE, events.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("no {what} event within {PATIENCE:?}"))
        .unwrap_or_else(|| panic!("event stream closed before {what}"))
}

/// Polls `probe` every 5 ms until it returns `Ok`, failing after [`PATIENCE`] with the
/// last `Err`'s account of what it saw. For states that raise no event here: written by
/// another worker or process, or read off a worker's health.
pub(super) async fn poll_until<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = match probe().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen}, after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the job reaches `want`, failing after [`PATIENCE`]. Polls storage: a
/// state written by another worker or process raises no event here.
pub(super) async fn until_status(q: &Queue, id: JobId, want: JobStatus) {
    poll_until(|| async move {
        let now = status(q, id).await;
        if now == want {
            Ok(())
        } else {
            Err(format!("job {id} is {now:?}, not {want:?}"))
        }
    })
    .await;
}

/// Waits until the job is finished (completed, failed or cancelled), failing after
/// [`PATIENCE`].
pub(super) async fn until_finished(q: &Queue, id: JobId) {
    poll_until(|| async move {
        let now = status(q, id).await;
        if now.is_finished() {
            Ok(())
        } else {
            Err(format!("job {id} is still {now:?}"))
        }
    })
    .await;
}
