//! Engine conformance for child jobs: fan-out and fan-in, fail-fast and thresholds,
//! bundles, and cancellation reaching children and running handlers.

use super::support::{job, queue, until_finished, worker, Runs};
use super::ConformanceHarness;
use crate::storage::Storage;
use crate::{
    BundleItem, BundleOptions, Event, FanOut, JobContext, JobId, JobOptions, JobStatus, Queue,
    TaskError, Worker, WorkerOptions,
};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Registers `square`: a negative number fails for good, zero runs until the job is
/// cancelled (so it is still running when a parent decides), others return their square.
fn register_children(q: &Queue, runs: &Runs) {
    let r = runs.clone();
    q.register("square", move |ctx: JobContext, n: i64| {
        let r = r.clone();
        async move {
            r.hit("square");
            if n < 0 {
                return Err(crate::NoRetry(format!("negative: {n}")).into());
            }
            if n == 0 {
                ctx.cancelled().await;
            }
            Ok::<_, TaskError>(n * n)
        }
    });
}

/// The statuses of `parent`'s children, by their arguments.
async fn children_by_arg(q: &Queue, parent: JobId) -> Vec<(i64, JobStatus)> {
    let mut kids: Vec<(i64, JobStatus)> = q
        .storage()
        .list_jobs(crate::JobFilter {
            parent_id: Some(parent),
            ..Default::default()
        })
        .await
        .expect("list children")
        .into_iter()
        .map(|k| (k.payload.as_i64().expect("an int argument"), k.status))
        .collect();
    kids.sort_by_key(|(n, _)| *n);
    kids
}

/// Runs a worker with room for every parent and child at once until each of `parents`
/// has finished. Children left running (zero) see their cancellation or the shutdown.
async fn run_until_finished(q: &Queue, parents: &[JobId]) {
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new()
            .queue("default", 8)
            .heartbeat_interval(Duration::from_millis(20)),
    )
    .expect("options");
    w.run_until(async {
        for &p in parents {
            until_finished(q, p).await;
        }
    })
    .await
    .expect("run");
}

/// Fan-out waits without a slot and fans in typed results in order.
pub async fn fan_out_collects_results_in_order<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register("parent", |ctx: JobContext, items: Vec<i64>| async move {
        let all = ctx
            .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::CollectAll)
            .await?;
        let one: i64 = ctx.join("square", &9, JobOptions::new()).await?;
        Ok::<_, TaskError>((all, one))
    });
    let id = q
        .enqueue("parent", &vec![3, -1, 2], JobOptions::new())
        .await
        .expect("enqueue");
    // One slot: the children can only run because the parent gave its slot back.
    let report = worker(&q, 1).drain().await.expect("drain");
    assert!(report.suspended >= 1);
    assert_eq!(job(&q, id).await.status, JobStatus::Completed);
    assert_eq!(
        job(&q, id).await.result,
        Some(json!([[{"Ok": 9}, {"Err": "negative: -1"}, {"Ok": 4}], 81]))
    );
    assert_eq!(runs.get("square"), 4, "no child ran twice");
}

/// Fail-fast fails the parent on the first failed child and cancels the rest: the two
/// siblings still running (they only end when cancelled) are cancelled by the parent.
pub async fn fan_out_fail_fast_cancels_the_rest<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register("parent", |ctx: JobContext, items: Vec<i64>| async move {
        let out = ctx
            .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::FailFast)
            .await?;
        Ok::<_, TaskError>(out.len())
    });
    let id = q
        .enqueue("parent", &vec![0, -5, 0], JobOptions::new())
        .await
        .expect("enqueue");
    run_until_finished(&q, &[id]).await;
    let j = job(&q, id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.last_error.unwrap_or_default().contains("negative: -5"));
    assert_eq!(
        children_by_arg(&q, id).await,
        vec![
            (-5, JobStatus::Failed),
            (0, JobStatus::Cancelled),
            (0, JobStatus::Cancelled)
        ],
        "the siblings of the failed child were cancelled"
    );
    assert_eq!(runs.get("square"), 3, "no child ran twice");
}

/// A threshold succeeds once enough children completed and cancels the one still running;
/// one that can no longer be met fails and cancels the rest too.
pub async fn fan_out_threshold<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    q.register(
        "parent",
        |ctx: JobContext, (items, need): (Vec<i64>, usize)| async move {
            let out = ctx
                .fan_out::<i64, _>("square", items, JobOptions::new(), FanOut::Threshold(need))
                .await?;
            Ok::<_, TaskError>(out.iter().filter(|r| r.is_ok()).count())
        },
    );
    let ok = q
        .enqueue("parent", &(vec![1, 0, 2], 2), JobOptions::new())
        .await
        .expect("enqueue");
    let impossible = q
        .enqueue("parent", &(vec![-1, -2, 0], 2), JobOptions::new())
        .await
        .expect("enqueue");
    run_until_finished(&q, &[ok, impossible]).await;
    assert_eq!(job(&q, ok).await.result, Some(json!(2)));
    assert_eq!(
        children_by_arg(&q, ok).await,
        vec![
            (0, JobStatus::Cancelled),
            (1, JobStatus::Completed),
            (2, JobStatus::Completed)
        ],
        "the child not needed was cancelled"
    );
    let failed = job(&q, impossible).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(
        failed
            .last_error
            .unwrap_or_default()
            .contains("only 1 of 3 children can complete, 2 needed"),
        "the failure says why"
    );
    assert_eq!(
        children_by_arg(&q, impossible).await,
        vec![
            (-2, JobStatus::Failed),
            (-1, JobStatus::Failed),
            (0, JobStatus::Cancelled)
        ],
        "the child left running was cancelled"
    );
    assert_eq!(runs.get("square"), 6, "no child ran twice");
}

/// A bundle tracks its jobs as one unit, reports once, and can delete them on success.
pub async fn bundles_report_when_done<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    let runs = Runs::default();
    register_children(&q, &runs);
    let finished = Arc::new(Mutex::new(Vec::new()));
    let f = finished.clone();
    q.on_bundle_done(move |e| f.lock().expect("lock").push(e.clone()));
    let good = q
        .enqueue_bundle(
            vec![
                BundleItem::new("square", &2, JobOptions::new()),
                BundleItem::new("square", &3, JobOptions::new()),
            ],
            BundleOptions::new().delete_on_success(true),
        )
        .await
        .expect("bundle");
    let bad = q
        .enqueue_bundle(
            vec![
                BundleItem::new("square", &4, JobOptions::new()),
                BundleItem::new("square", &-4, JobOptions::new()),
            ],
            BundleOptions::new(),
        )
        .await
        .expect("bundle");
    let before = q.bundle_status(bad).await.expect("status");
    assert_eq!((before.total, before.unfinished), (2, 2));
    worker(&q, 2).drain().await.expect("drain");
    let good_status = q.bundle_status(good).await.expect("status");
    assert_eq!(good_status.status, JobStatus::Completed);
    assert_eq!(good_status.total, 0, "members deleted on success");
    let bad_status = q.bundle_status(bad).await.expect("status");
    assert_eq!(bad_status.status, JobStatus::Failed);
    assert_eq!((bad_status.completed, bad_status.failed), (1, 1));
    let mut got: Vec<(JobId, bool)> = finished
        .lock()
        .expect("lock")
        .iter()
        .map(|e| match e {
            Event::BundleFinished {
                bundle_id,
                succeeded,
                ..
            } => (*bundle_id, *succeeded),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(good, true), (bad, false)]);
}

/// Cancelling a parent cancels its children, and a running handler sees it.
pub async fn cancel_reaches_children_and_running_handlers<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("child", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    q.register("parent", |ctx: JobContext, _: ()| async move {
        ctx.fan_out::<(), _>(
            "child",
            vec![(), ()],
            JobOptions::new().delay(Duration::from_secs(3600)),
            FanOut::CollectAll,
        )
        .await?;
        Ok::<_, TaskError>(())
    });
    let parent = q
        .enqueue("parent", &(), JobOptions::new())
        .await
        .expect("enqueue");
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(job(&q, parent).await.status, JobStatus::Waiting);
    assert!(q.cancel(parent).await.expect("cancel"));
    let kids = q
        .storage()
        .list_jobs(crate::JobFilter {
            parent_id: Some(parent),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(kids.len(), 2);
    assert!(kids.iter().all(|k| k.status == JobStatus::Cancelled));

    // A running handler learns of its cancellation through the context, while the
    // worker keeps running (so it is not the shutdown it sees).
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (saw_tx, saw_rx) = tokio::sync::oneshot::channel::<()>();
    let chans = Arc::new(Mutex::new(Some((started_tx, saw_tx))));
    q.register("long", move |ctx: JobContext, _: ()| {
        let chans = chans.clone();
        async move {
            let Some((started, saw)) = chans.lock().expect("lock").take() else {
                return Ok::<_, TaskError>("second run");
            };
            let _ = started.send(());
            ctx.cancelled().await;
            let _ = saw.send(());
            Ok::<_, TaskError>("saw cancellation")
        }
    });
    let id = q
        .enqueue("long", &(), JobOptions::new())
        .await
        .expect("enqueue");
    let w = Worker::new(
        q.clone(),
        WorkerOptions::new().heartbeat_interval(Duration::from_millis(20)),
    )
    .expect("options");
    let qc = q.clone();
    let report = w
        .run_until(async move {
            started_rx.await.expect("handler started");
            qc.cancel(id).await.expect("cancel running");
            tokio::time::timeout(Duration::from_secs(20), saw_rx)
                .await
                .expect("the handler saw its cancellation while the worker ran")
                .expect("handler reported");
        })
        .await
        .expect("run");
    assert_eq!(job(&q, id).await.status, JobStatus::Cancelled);
    assert_eq!(
        (report.completed, report.lost),
        (0, 1),
        "the late completion was fenced"
    );
}
