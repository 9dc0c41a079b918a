//! Trace propagation: enqueue spans, attempt spans, call and step spans, and the trace
//! context jobs carry, seen through a layer that captures every span with its fields.

use super::{setup, worker};
use ::tracing::field::{Field, Visit};
use ::tracing::span::{Attributes, Id, Record};
use ::tracing::Subscriber;
use durable_jobs::trace::{self, TraceContext};
use durable_jobs::{
    BundleItem, BundleOptions, JobContext, JobId, JobOptions, JobStatus, Queue, TaskError, Worker,
    WorkerOptions,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// A span as the capturing layer saw it.
#[derive(Debug, Clone)]
struct Captured {
    /// Its position in the capture, which stays unique even when the registry reuses ids.
    seq: usize,
    name: &'static str,
    /// The capture position of its parent span.
    parent: Option<usize>,
    fields: HashMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("span {} has no field {name}: {self:?}", self.name))
    }
}

/// Records every span, its fields (including those recorded later) and its parent.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

/// The capture position, kept in the registry's span extensions.
struct Seq(usize);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Seq>().map(|s| s.0));
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().expect("capture lock");
        let seq = spans.len();
        spans.push(Captured {
            seq,
            name: attrs.metadata().name(),
            parent,
            fields,
        });
        span.extensions_mut().insert(Seq(seq));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(seq) = span.extensions().get::<Seq>().map(|s| s.0) else {
            return;
        };
        let mut spans = self.0.lock().expect("capture lock");
        values.record(&mut Fields(&mut spans[seq].fields));
    }
}

/// A subscriber that wants nothing but keeps every callsite's interest at "sometimes".
///
/// `tracing` caches each callsite's interest process-wide. While at most one dispatcher
/// is registered, a callsite first hit on a thread without a subscriber (another test
/// in this binary) is cached as "never", and a capture installed on this thread would
/// then miss its spans. With this one registered for the whole process there are always
/// two, so interest is the union over all of them and each span asks the current
/// thread's subscriber.
struct Anchor;

impl Subscriber for Anchor {
    fn register_callsite(
        &self,
        _: &'static ::tracing::Metadata<'static>,
    ) -> ::tracing::subscriber::Interest {
        ::tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &::tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &::tracing::Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// Makes a registry with this layer the current thread's subscriber until the guard
    /// drops. The tests run on a current-thread runtime, so the worker's tasks see it.
    fn install(&self) -> ::tracing::subscriber::DefaultGuard {
        static ANCHOR: std::sync::OnceLock<::tracing::Dispatch> = std::sync::OnceLock::new();
        ANCHOR.get_or_init(|| ::tracing::Dispatch::new(Anchor));
        ::tracing::subscriber::set_default(Registry::default().with(self.clone()))
    }

    fn spans(&self) -> Vec<Captured> {
        self.0.lock().expect("capture lock").clone()
    }

    /// Spans named `name` whose fields include every `(field, value)` of `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<Captured> {
        self.spans()
            .into_iter()
            .filter(|s| {
                s.name == name
                    && with
                        .iter()
                        .all(|(k, v)| s.fields.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one span named `name` with these fields.
    fn one(&self, name: &str, with: &[(&str, &str)]) -> Captured {
        let mut found = self.find(name, with);
        assert_eq!(
            found.len(),
            1,
            "expected one {name} span with {with:?}, found {found:#?}\nall: {:#?}",
            self.spans()
        );
        found.remove(0)
    }

    /// The attempt span of attempt `attempt` of job `id`.
    fn attempt(&self, id: JobId, attempt: i32) -> Captured {
        self.one(
            "durable_jobs.attempt",
            &[
                ("job_id", &id.to_string()),
                ("attempt", &attempt.to_string()),
            ],
        )
    }
}

fn noop(queue: &Queue, name: &str) {
    queue.register(name, |_ctx: JobContext, _args: Value| async {
        Ok::<_, TaskError>(())
    });
}

async fn stored_trace(queue: &Queue, id: JobId) -> TraceContext {
    let job = queue.get_job(id).await.expect("get").expect("exists");
    let tp = job.trace_context.expect("the job carries a traceparent");
    TraceContext::parse(&tp).expect("a valid traceparent")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn the_attempt_span_continues_the_enqueue_span() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    noop(&queue, "noop");
    let id = {
        let request = ::tracing::info_span!("request");
        let _entered = request.enter();
        queue
            .enqueue("noop", &json!({}), JobOptions::new())
            .await
            .expect("enqueue")
    };
    let w = Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("default", 1).name("tracer-1"),
    )
    .expect("worker");
    assert_eq!(w.drain().await.expect("drain").completed, 1);

    let request = capture.one("request", &[]);
    let enqueue = capture.one("durable_jobs.enqueue", &[("task", "noop")]);
    assert_eq!(
        enqueue.parent,
        Some(request.seq),
        "enqueue nests in the caller's span"
    );
    assert_eq!(enqueue.field("queue"), "default");
    assert_eq!(enqueue.field("count"), "1");
    assert!(is_hex(enqueue.field("trace_id"), 32), "{enqueue:?}");
    assert!(is_hex(enqueue.field("span_id"), 16), "{enqueue:?}");

    let attempt = capture.attempt(id, 1);
    assert_eq!(attempt.field("trace_id"), enqueue.field("trace_id"));
    assert_eq!(attempt.field("parent_span_id"), enqueue.field("span_id"));
    assert!(is_hex(attempt.field("span_id"), 16));
    assert_ne!(attempt.field("span_id"), enqueue.field("span_id"));
    assert_eq!(attempt.field("task"), "noop");
    assert_eq!(attempt.field("queue"), "default");
    assert_eq!(attempt.field("worker"), "tracer-1");
    assert_eq!(
        attempt.parent, None,
        "an attempt is linked by ids, not nested"
    );

    // The stored traceparent is the enqueue span's.
    let stored = stored_trace(&queue, id).await;
    assert_eq!(stored.trace_id_hex(), enqueue.field("trace_id"));
    assert_eq!(stored.span_id_hex(), enqueue.field("span_id"));
    assert!(stored.sampled);
}

#[tokio::test]
async fn every_attempt_of_a_retried_job_continues_the_same_enqueue() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, clock) = setup();
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    queue.register("flaky", move |_ctx: JobContext, _args: Value| {
        let f = f.clone();
        async move {
            if f.swap(false, Ordering::SeqCst) {
                return Err(TaskError::retry("once"));
            }
            Ok(())
        }
    });
    let id = queue
        .enqueue("flaky", &json!({}), JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    assert_eq!(w.drain().await.expect("drain").retried, 1);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    let enqueue = capture.one("durable_jobs.enqueue", &[("task", "flaky")]);
    let (first, second) = (capture.attempt(id, 1), capture.attempt(id, 2));
    for a in [&first, &second] {
        assert_eq!(a.field("trace_id"), enqueue.field("trace_id"));
        assert_eq!(a.field("parent_span_id"), enqueue.field("span_id"));
    }
    assert_ne!(first.field("span_id"), second.field("span_id"));
}

#[tokio::test]
async fn call_and_step_spans_nest_in_the_attempt_span_and_show_replays() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, clock) = setup();
    queue.register("inc", |_ctx: JobContext, n: i64| async move {
        Ok::<_, TaskError>(n + 1)
    });
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    queue.register("flow", move |ctx: JobContext, n: i64| {
        let f = f.clone();
        async move {
            let a: i64 = ctx.call("inc", &n).await?;
            let b: i64 = ctx
                .step("double", move |sctx: JobContext| async move {
                    let c: i64 = sctx.call("inc", &a).await?;
                    Ok(c * 2)
                })
                .await?;
            if f.swap(false, Ordering::SeqCst) {
                return Err(TaskError::retry("crash after the step"));
            }
            Ok(b)
        }
    });
    let id = queue
        .enqueue("flow", &1, JobOptions::new())
        .await
        .expect("enqueue");
    let w = worker(&queue, 1);
    assert_eq!(w.drain().await.expect("drain").retried, 1);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(w.drain().await.expect("drain").completed, 1);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.result, Some(json!(6)));

    for (attempt, replayed) in [(1, "false"), (2, "true")] {
        let a = capture.attempt(id, attempt);
        let children: Vec<Captured> = capture
            .spans()
            .into_iter()
            .filter(|s| s.parent == Some(a.seq))
            .collect();
        let call = children
            .iter()
            .find(|s| s.name == "durable_jobs.call")
            .unwrap_or_else(|| panic!("no call span under attempt {attempt}: {children:#?}"));
        assert_eq!(call.field("name"), "inc");
        assert_eq!(call.field("key"), "0");
        assert_eq!(call.field("replayed"), replayed);
        let step = children
            .iter()
            .find(|s| s.name == "durable_jobs.step")
            .unwrap_or_else(|| panic!("no step span under attempt {attempt}: {children:#?}"));
        assert_eq!(step.field("name"), "double");
        assert_eq!(step.field("key"), "1");
        assert_eq!(step.field("replayed"), replayed);
        // The call made inside the step nests in the step's span; on the replay the
        // step returns its stored result without running it.
        let inner: Vec<Captured> = capture
            .spans()
            .into_iter()
            .filter(|s| s.parent == Some(step.seq) && s.name == "durable_jobs.call")
            .collect();
        if attempt == 1 {
            assert_eq!(inner.len(), 1, "{inner:#?}");
            assert_eq!(inner[0].name, "durable_jobs.call");
            assert_eq!(inner[0].field("key"), "1/0");
            assert_eq!(inner[0].field("replayed"), "false");
        } else {
            assert!(inner.is_empty(), "a replayed step ran its body: {inner:#?}");
        }
    }
}

#[tokio::test]
async fn a_child_job_runs_in_its_parents_trace() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    queue.register("square", |_ctx: JobContext, n: i64| async move {
        Ok::<_, TaskError>(n * n)
    });
    queue.register("parent", |ctx: JobContext, n: i64| async move {
        let v: i64 = ctx.join("square", &n, JobOptions::new()).await?;
        Ok::<_, TaskError>(v)
    });
    let id = queue
        .enqueue("parent", &7, JobOptions::new())
        .await
        .expect("enqueue");
    worker(&queue, 1).drain().await.expect("drain");
    let job = queue.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result, Some(json!(49)));

    let parent_enqueue = capture.one("durable_jobs.enqueue", &[("task", "parent")]);
    // Suspending spends no attempt: the parent runs twice as attempt 1.
    let runs = capture.find(
        "durable_jobs.attempt",
        &[("job_id", &id.to_string()), ("attempt", "1")],
    );
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let (first, resumed) = (&runs[0], &runs[1]);
    let spawn = capture.one("durable_jobs.enqueue", &[("task", "square")]);
    assert_eq!(
        spawn.parent,
        Some(first.seq),
        "the children's enqueue nests in the attempt"
    );
    assert_eq!(spawn.field("trace_id"), parent_enqueue.field("trace_id"));
    assert_eq!(spawn.field("parent_span_id"), first.field("span_id"));

    let child = capture.one("durable_jobs.attempt", &[("task", "square")]);
    assert_eq!(child.field("trace_id"), first.field("trace_id"));
    assert_eq!(child.field("parent_span_id"), spawn.field("span_id"));
    // The parent's resumed run stays in the trace too, continuing the same enqueue.
    assert_eq!(resumed.field("trace_id"), first.field("trace_id"));
    assert_eq!(
        resumed.field("parent_span_id"),
        parent_enqueue.field("span_id")
    );
}

#[tokio::test]
async fn a_job_enqueued_by_a_job_stays_in_the_trace() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    noop(&queue, "second");
    queue.register("first", |ctx: JobContext, _args: Value| async move {
        let id = ctx
            .queue()
            .enqueue("second", &json!({}), JobOptions::new())
            .await
            .map_err(TaskError::from_engine)?;
        // The attempt's context is the task's current one.
        let current = trace::current().expect("a current context inside an attempt");
        Ok::<_, TaskError>((id, current.trace_id_hex(), current.span_id_hex()))
    });
    let id = queue
        .enqueue("first", &json!({}), JobOptions::new())
        .await
        .expect("enqueue");
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").completed, 2);
    let job = queue.get_job(id).await.expect("get").expect("exists");
    let (second_id, current_trace, current_span): (JobId, String, String) =
        serde_json::from_value(job.result.expect("result")).expect("result shape");

    let first = capture.attempt(id, 1);
    assert_eq!(first.field("trace_id"), current_trace);
    assert_eq!(first.field("span_id"), current_span);
    let inner = capture.one("durable_jobs.enqueue", &[("task", "second")]);
    assert_eq!(inner.parent, Some(first.seq));
    assert_eq!(inner.field("trace_id"), first.field("trace_id"));
    assert_eq!(inner.field("parent_span_id"), first.field("span_id"));
    let second = capture.attempt(second_id, 1);
    assert_eq!(second.field("trace_id"), first.field("trace_id"));
    assert_eq!(second.field("parent_span_id"), inner.field("span_id"));
    assert_eq!(trace::current(), None, "no context outside attempts");
}

#[tokio::test]
async fn batches_and_bundles_store_one_enqueue_context() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    noop(&queue, "noop");
    let ids = queue
        .enqueue_many("noop", [json!(1), json!(2), json!(3)], JobOptions::new())
        .await
        .expect("enqueue_many");
    let batch = capture.one("durable_jobs.enqueue", &[("task", "noop"), ("count", "3")]);
    for id in &ids {
        let t = stored_trace(&queue, *id).await;
        assert_eq!(t.trace_id_hex(), batch.field("trace_id"));
        assert_eq!(t.span_id_hex(), batch.field("span_id"));
    }
    let bundle = queue
        .enqueue_bundle(
            vec![
                BundleItem::new("noop", &1, JobOptions::new()),
                BundleItem::new("noop", &2, JobOptions::new()),
            ],
            BundleOptions::new(),
        )
        .await
        .expect("bundle");
    let span = capture.one(
        "durable_jobs.enqueue",
        &[("task", durable_jobs::BUNDLE_TASK), ("count", "3")],
    );
    let status = queue.bundle_status(bundle).await.expect("status");
    for id in std::iter::once(bundle).chain(status.members.iter().map(|(id, _)| *id)) {
        let t = stored_trace(&queue, id).await;
        assert_eq!(t.trace_id_hex(), span.field("trace_id"));
        assert_eq!(t.span_id_hex(), span.field("span_id"));
    }
    worker(&queue, 2).drain().await.expect("drain");
    let member = capture.attempt(status.members[0].0, 1);
    assert_eq!(member.field("trace_id"), span.field("trace_id"));
    assert_eq!(member.field("parent_span_id"), span.field("span_id"));
}

#[tokio::test]
async fn an_enqueue_in_a_scope_continues_the_given_trace() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    noop(&queue, "noop");
    let incoming = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .expect("valid");
    let id = trace::scope(
        incoming,
        queue.enqueue("noop", &json!({}), JobOptions::new()),
    )
    .await
    .expect("enqueue");
    let stored = stored_trace(&queue, id).await;
    assert_eq!(stored.trace_id, incoming.trace_id);
    assert_ne!(stored.span_id, incoming.span_id);
    let enqueue = capture.one("durable_jobs.enqueue", &[("task", "noop")]);
    assert_eq!(enqueue.field("parent_span_id"), "b7ad6b7169203331");
    worker(&queue, 1).drain().await.expect("drain");
    let attempt = capture.attempt(id, 1);
    assert_eq!(
        attempt.field("trace_id"),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(attempt.field("parent_span_id"), enqueue.field("span_id"));
}

#[tokio::test]
async fn a_job_without_a_trace_context_gets_a_fresh_trace() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (queue, _clock) = setup();
    noop(&queue, "noop");
    // Straight into storage, as an older version or another producer would.
    let mut bad = durable_jobs::NewJob::new("noop", json!({}));
    bad.trace_context = Some("not a traceparent".into());
    let bad_id = durable_jobs::Storage::enqueue(queue.storage(), bad)
        .await
        .expect("enqueue")
        .id;
    let none_id = durable_jobs::Storage::enqueue(
        queue.storage(),
        durable_jobs::NewJob::new("noop", json!({})),
    )
    .await
    .expect("enqueue")
    .id;
    assert_eq!(worker(&queue, 1).drain().await.expect("drain").completed, 2);
    let (a, b) = (capture.attempt(bad_id, 1), capture.attempt(none_id, 1));
    for s in [&a, &b] {
        assert!(is_hex(s.field("trace_id"), 32));
        assert!(!s.fields.contains_key("parent_span_id"), "{s:?}");
    }
    assert_ne!(a.field("trace_id"), b.field("trace_id"));
}
