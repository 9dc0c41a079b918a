//! Engine conformance for schedules: racing schedulers, catch-up rules, no-overlap,
//! pause and validation.

use super::support::{queue, worker};
use super::ConformanceHarness;
use crate::storage::Storage;
use crate::{JobContext, Queue, TaskError};
use std::time::Duration;

/// Three schedulers racing over the same storage enqueue each tick exactly once.
pub async fn racing_schedulers_enqueue_each_tick_once<H: ConformanceHarness>(h: &H) {
    let queues: Vec<Queue> = (0..3).map(|_| queue(h)).collect();
    for q in &queues {
        q.register("tick", |_ctx: JobContext, _: ()| async {
            Ok::<_, TaskError>(())
        });
    }
    queues[0]
        .add_schedule(
            "every10",
            crate::Schedule::every(Duration::from_secs(10)).task("tick", &()),
        )
        .await
        .expect("add schedule");
    let base = queues[0].storage().now().await.expect("now");
    let mut total = 0;
    for k in 1..=5 {
        let now = base + chrono::Duration::seconds(10 * k);
        let passes = queues.iter().map(|q| {
            let q = q.clone();
            tokio::spawn(async move { q.run_schedules(now).await })
        });
        let mut this_tick = 0;
        for p in passes.collect::<Vec<_>>() {
            this_tick += p.await.expect("task").expect("pass").enqueued.len();
        }
        assert_eq!(this_tick, 1, "tick {k} enqueued {this_tick} times");
        total += this_tick;
    }
    let jobs = queues[0]
        .storage()
        .list_jobs(crate::JobFilter::default())
        .await
        .expect("list");
    assert_eq!((total, jobs.len()), (5, 5));
}

/// Missed ticks follow the catch-up rule: skip, one, or backfill within a window.
pub async fn missed_ticks_follow_the_catch_up_rule<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("tick", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    let every = |c| {
        crate::Schedule::every(Duration::from_secs(60))
            .task("tick", &())
            .catch_up(c)
    };
    q.add_schedule("skip", every(crate::CatchUp::Skip))
        .await
        .expect("add");
    q.add_schedule("one", every(crate::CatchUp::One))
        .await
        .expect("add");
    q.add_schedule(
        "backfill",
        every(crate::CatchUp::Backfill { window_secs: 300 }),
    )
    .await
    .expect("add");
    // Ticks fall on whole minutes: A is the first one after the schedules' cursor.
    let now = q.storage().now().await.expect("now");
    let a = chrono::DateTime::from_timestamp((now.timestamp() / 60 + 1) * 60, 0).expect("time");
    let at = |s: i64| a + chrono::Duration::seconds(s);
    // Ten missed ticks (A .. A+540), then a pass 30 seconds after the last one.
    let r = q.run_schedules(at(570)).await.expect("pass");
    let count = |name: &str| r.enqueued.iter().filter(|(n, _)| n == name).count();
    assert_eq!(
        count("skip"),
        1,
        "only the tick 30s ago is within the grace"
    );
    assert_eq!(count("one"), 1);
    assert_eq!(count("backfill"), 5, "ticks in the last 5 minutes");
    assert_eq!(r.skipped, 18, "skip and one passed over nine ticks each");
    // Nothing more until the next tick, then one each.
    assert!(q
        .run_schedules(at(575))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
    assert_eq!(
        q.run_schedules(at(610)).await.expect("pass").enqueued.len(),
        3
    );
}

/// No-overlap skips ticks while the previous run is unfinished; pause and resume work at
/// run time; bad schedules are refused when added.
pub async fn schedules_no_overlap_pause_and_validation<H: ConformanceHarness>(h: &H) {
    let q = queue(h);
    q.register("tick", |_ctx: JobContext, _: ()| async {
        Ok::<_, TaskError>(())
    });
    let bad = q
        .add_schedule(
            "bad",
            crate::Schedule::cron("every tuesday").task("tick", &()),
        )
        .await;
    assert!(
        matches!(bad, Err(crate::Error::InvalidOption { .. })),
        "{bad:?}"
    );
    let unknown = q
        .add_schedule(
            "u",
            crate::Schedule::every(Duration::from_secs(1)).task("nope", &()),
        )
        .await;
    assert!(matches!(unknown, Err(crate::Error::UnknownTask(_))));
    q.add_schedule(
        "solo",
        crate::Schedule::every(Duration::from_secs(60))
            .task("tick", &())
            .no_overlap(true),
    )
    .await
    .expect("add");
    let base = q.storage().now().await.expect("now");
    let at = |s: i64| base + chrono::Duration::seconds(s);
    assert_eq!(
        q.run_schedules(at(61)).await.expect("pass").enqueued.len(),
        1
    );
    // The first run has not finished: the next tick is skipped.
    let r = q.run_schedules(at(121)).await.expect("pass");
    assert_eq!((r.enqueued.len(), r.skipped), (0, 1));
    worker(&q, 1).drain().await.expect("drain");
    assert_eq!(
        q.run_schedules(at(181)).await.expect("pass").enqueued.len(),
        1
    );
    assert!(q.pause_schedule("solo").await.expect("pause"));
    worker(&q, 1).drain().await.expect("drain");
    assert!(q
        .run_schedules(at(241))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
    assert!(q.resume_schedule("solo").await.expect("resume"));
    assert_eq!(
        q.run_schedules(at(245)).await.expect("pass").enqueued.len(),
        1
    );
    let info = q.schedules().await.expect("list");
    assert_eq!(info.len(), 1);
    assert!(info[0].next_tick.is_some_and(|t| t > at(245)));
    assert!(q.remove_schedule("solo").await.expect("remove"));
    assert!(q
        .run_schedules(at(400))
        .await
        .expect("pass")
        .enqueued
        .is_empty());
}
