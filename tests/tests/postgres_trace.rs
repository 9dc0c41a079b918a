//! A trace crosses processes: a job enqueued here, inside a known trace, runs in a worker
//! process (`pg_trace_worker`) whose attempt span reports the same trace id, with the
//! enqueue span (whose id the job stored) as its parent.

use durable_jobs::trace::{self, TraceContext};
use durable_jobs::{JobOptions, Queue};
use durable_jobs_postgres::testing::TestSchema;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The task `pg_trace_worker` serves.
const TASK: &str = "traced";

/// The `key=value` pairs of the output lines starting with `kind`, by `job_id`.
fn lines_by_job(stdout: &str, kind: &str) -> HashMap<i64, HashMap<String, String>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        })
        .filter_map(|f| Some((f.get("job_id")?.parse().ok()?, f)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_here_runs_in_the_same_trace_in_another_process() {
    let t = TestSchema::new().await.expect("test schema");
    // The producer has no handler for the task: it only enqueues.
    let queue = Queue::new(Arc::new(t.storage().clone()));
    // A request whose trace arrived from upstream as a `traceparent` header.
    let incoming = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .expect("valid traceparent");
    let request = tracing::info_span!("request");
    let traced = trace::scope(
        incoming,
        queue.enqueue_raw(TASK, json!({ "n": 1 }), JobOptions::new()),
    )
    .instrument(request)
    .await
    .expect("enqueue");
    // And one outside any trace: it starts a fresh one.
    let fresh = queue
        .enqueue_raw(TASK, json!({ "n": 2 }), JobOptions::new())
        .await
        .expect("enqueue");
    let stored = |id| {
        let queue = queue.clone();
        async move {
            let job = queue.get_job(id).await.expect("get").expect("exists");
            TraceContext::parse(job.trace_context.as_deref().expect("traceparent stored"))
                .expect("valid stored traceparent")
        }
    };
    let (traced_ctx, fresh_ctx) = (stored(traced).await, stored(fresh).await);
    assert_eq!(traced_ctx.trace_id, incoming.trace_id);
    assert_ne!(
        traced_ctx.span_id, incoming.span_id,
        "the enqueue span's own id"
    );
    assert_ne!(fresh_ctx.trace_id, incoming.trace_id);

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg_trace_worker"))
        .args(["--url", t.url(), "--schema", t.schema()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pg_trace_worker");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("pg_trace_worker finished within 120 s (killed otherwise)")
        .expect("collect output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_trace_worker failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts = lines_by_job(&stdout, "attempt");
    let handlers = lines_by_job(&stdout, "handler");
    for (id, ctx) in [(traced, traced_ctx), (fresh, fresh_ctx)] {
        let a = attempts
            .get(&id)
            .unwrap_or_else(|| panic!("no attempt span for job {id} in:\n{stdout}"));
        assert_eq!(a["trace_id"], ctx.trace_id_hex(), "job {id}: {a:?}");
        assert_eq!(a["parent_span_id"], ctx.span_id_hex(), "job {id}: {a:?}");
        assert_eq!(a["attempt"], "1");
        assert_ne!(a["span_id"], ctx.span_id_hex());
        let h = &handlers[&id];
        assert_eq!(h["current_trace_id"], ctx.trace_id_hex(), "job {id}: {h:?}");
        assert_eq!(h["stored"], ctx.to_traceparent());
    }
    assert_eq!(
        attempts[&traced]["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    t.drop_schema().await.expect("drop");
}
