//! Schedules in named time zones across the 2026 daylight-saving changes of Europe/Berlin
//! (29 March and 25 October, at 01:00 UTC) and America/New_York (8 March at 07:00 UTC
//! and 1 November at 06:00 UTC), and crontab text added to a queue.

use chrono::{DateTime, FixedOffset, Utc};
use durable_jobs::{Clock, Error, JobContext, JobFilter, ManualClock, Queue, Schedule, TaskError};
use durable_jobs_memory::MemoryStorage;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .expect("valid time")
}

/// The ticks of `schedule` after `from`, up to and including `until`.
fn ticks(schedule: &Schedule, from: &str, until: &str) -> Vec<String> {
    let until = at(until);
    let mut out = Vec::new();
    let mut t = at(from);
    while let Some(next) = schedule.next_after(t) {
        if next > until {
            break;
        }
        out.push(next.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        t = next;
    }
    out
}

/// A queue on memory storage whose clock starts at `start`, with a task `tick`.
fn queue_at(start: &str) -> (Queue, ManualClock) {
    let clock = ManualClock::starting_at(at(start));
    let queue = Queue::new(Arc::new(MemoryStorage::with_clock(clock.clone())));
    queue.register("tick", |_ctx: JobContext, _: Value| async {
        Ok::<_, TaskError>(())
    });
    (queue, clock)
}

/// Runs a scheduler pass every five minutes until `until`; returns each enqueued job as
/// (schedule, time of the pass), and checks that storage holds exactly those jobs.
async fn drive(queue: &Queue, clock: &ManualClock, until: &str) -> Vec<(String, String)> {
    let until = at(until);
    let mut seen = Vec::new();
    while clock.now() < until {
        clock.advance(Duration::from_secs(300));
        let report = queue.run_schedules(clock.now()).await.expect("pass");
        assert_eq!(report.lost_races, 0);
        for (name, _) in report.enqueued {
            seen.push((name, clock.now().format("%Y-%m-%dT%H:%M:%SZ").to_string()));
        }
    }
    let stored = queue
        .list_jobs(JobFilter {
            limit: Some(10_000),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(stored.len(), seen.len(), "one stored job per enqueued tick");
    seen
}

fn named(name: &str, times: &[&str]) -> Vec<(String, String)> {
    times
        .iter()
        .map(|t| (name.to_string(), t.to_string()))
        .collect()
}

#[test]
fn daily_in_berlin_runs_a_skipped_time_at_the_change_and_a_repeated_time_once() {
    let backup = Schedule::daily(2, 30)
        .in_zone("Europe/Berlin")
        .task("tick", &());
    // Spring: 02:30 does not exist on 29 March; it runs at 03:00 CEST (01:00 UTC).
    assert_eq!(
        ticks(&backup, "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
            "2026-03-31T00:30:00Z",
        ]
    );
    // Autumn: 02:30 happens twice on 25 October; only the first (CEST) runs.
    assert_eq!(
        ticks(&backup, "2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z"),
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
            "2026-10-27T01:30:00Z",
        ]
    );
    // Asked from inside the repeated hour (02:45 CET), the next tick is the next day's.
    assert_eq!(
        backup.next_after(at("2026-10-25T01:45:00Z")),
        Some(at("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn daily_and_weekly_in_new_york_across_both_changes() {
    let early = Schedule::daily(2, 30)
        .in_zone("America/New_York")
        .task("tick", &());
    // 8 March: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    assert_eq!(
        ticks(&early, "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
        ]
    );
    // 1 November: 01:00-01:59 repeats; 01:30 runs at 01:30 EDT only.
    let night = Schedule::daily(1, 30)
        .in_zone("America/New_York")
        .task("tick", &());
    assert_eq!(
        ticks(&night, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
        ]
    );
    // 8 March 2026 is a Sunday.
    let sunday = Schedule::weekly(chrono::Weekday::Sun, 2, 15)
        .in_zone("America/New_York")
        .task("tick", &());
    assert_eq!(
        ticks(&sunday, "2026-03-01T12:00:00Z", "2026-03-16T00:00:00Z"),
        ["2026-03-08T07:00:00Z", "2026-03-15T06:15:00Z"]
    );
}

#[test]
fn cron_in_a_zone_runs_each_local_time_once() {
    // Every 30 minutes in Berlin on the spring-forward night: 02:00 and 02:30 are
    // skipped and run as one tick with 03:00 CEST.
    let half_hourly = Schedule::cron("*/30 * * * *")
        .in_zone("Europe/Berlin")
        .task("tick", &());
    assert_eq!(
        ticks(&half_hourly, "2026-03-28T23:45:00Z", "2026-03-29T02:00:00Z"),
        [
            "2026-03-29T00:00:00Z",
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T02:00:00Z",
        ]
    );
    // Hourly in New York on the fall-back night: 01:00 runs once (EDT); 01:00 EST
    // (06:00 UTC) does not run again.
    let hourly = Schedule::cron("0 * * * *")
        .in_zone("America/New_York")
        .task("tick", &());
    assert_eq!(
        ticks(&hourly, "2026-11-01T03:30:00Z", "2026-11-01T08:00:00Z"),
        [
            "2026-11-01T04:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z",
        ]
    );
    // `every` does not depend on the zone.
    let every = Schedule::every(Duration::from_secs(3600))
        .in_zone("Europe/Berlin")
        .task("tick", &());
    assert_eq!(
        ticks(&every, "2026-10-24T23:30:00Z", "2026-10-25T02:00:00Z").len(),
        3
    );
}

#[test]
fn definitions_stored_before_zones_still_read_in_utc_or_their_offset() {
    let old: Schedule = serde_json::from_value(json!({
        "spec": {"daily": {"hour": 9, "minute": 0}},
        "task": "tick",
        "payload": null,
        "utc_offset_secs": 3600,
    }))
    .expect("an old definition reads");
    assert_eq!(old.time_zone(), None);
    assert_eq!(
        old.next_after(at("2026-03-29T00:00:00Z")),
        Some(at("2026-03-29T08:00:00Z"))
    );
    // A zone round-trips through the stored form; without one the form is unchanged.
    let zoned = Schedule::daily(9, 0)
        .in_zone("Europe/Berlin")
        .task("tick", &());
    let stored = serde_json::to_value(&zoned).expect("serializes");
    assert_eq!(stored["time_zone"], "Europe/Berlin");
    assert_eq!(
        serde_json::from_value::<Schedule>(stored).expect("reads"),
        zoned
    );
    let plain = serde_json::to_value(Schedule::daily(9, 0).task("tick", &())).expect("json");
    assert!(plain.get("time_zone").is_none(), "{plain}");
}

#[tokio::test]
async fn an_unknown_zone_is_refused_when_added_naming_it() {
    let (queue, _clock) = queue_at("2026-01-01T00:00:00Z");
    let err = queue
        .add_schedule(
            "backup",
            Schedule::daily(2, 30)
                .in_zone("Europe/Berln")
                .task("tick", &()),
        )
        .await
        .expect_err("unknown zone");
    assert!(
        matches!(&err, Error::InvalidOption { option: "time_zone", message } if message.contains("`Europe/Berln`")),
        "{err}"
    );
    let both = queue
        .add_schedule(
            "backup",
            Schedule::daily(2, 30)
                .in_zone("Europe/Berlin")
                .utc_offset(FixedOffset::east_opt(3600).expect("offset"))
                .task("tick", &()),
        )
        .await;
    assert!(
        matches!(
            both,
            Err(Error::InvalidOption {
                option: "time_zone",
                ..
            })
        ),
        "{both:?}"
    );
    assert!(queue.schedules().await.expect("list").is_empty());
}

#[tokio::test]
async fn the_scheduler_enqueues_one_job_per_tick_across_spring_forward() {
    let (queue, clock) = queue_at("2026-03-27T12:00:00Z");
    queue
        .add_schedule(
            "berlin",
            Schedule::daily(2, 30)
                .in_zone("Europe/Berlin")
                .task("tick", &()),
        )
        .await
        .expect("add");
    queue
        .add_crontab("*/30 1-3 29 3 * tick ?id=berlin_night&tz=Europe/Berlin")
        .await
        .expect("add crontab");
    let seen = drive(&queue, &clock, "2026-03-30T12:00:00Z").await;
    let mut expected = named(
        "berlin",
        &[
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
        ],
    );
    // 01:00, 01:30 CET, then 02:00 and 02:30 (skipped) with 03:00 CEST as one, 03:30.
    expected.extend(named(
        "berlin_night",
        &[
            "2026-03-29T00:00:00Z",
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
        ],
    ));
    let mut seen = seen;
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn the_scheduler_enqueues_one_job_per_tick_across_fall_back() {
    let (queue, clock) = queue_at("2026-10-31T12:00:00Z");
    queue
        .add_schedule(
            "new_york",
            Schedule::daily(1, 30)
                .in_zone("America/New_York")
                .task("tick", &()),
        )
        .await
        .expect("add");
    queue
        .add_crontab("0 * 1 11 * tick ?id=new_york_hourly&tz=America/New_York {source:'crontab'}")
        .await
        .expect("add crontab");
    let seen = drive(&queue, &clock, "2026-11-02T12:00:00Z").await;
    let daily: Vec<_> = seen
        .iter()
        .filter(|(n, _)| n == "new_york")
        .cloned()
        .collect();
    assert_eq!(
        daily,
        named(
            "new_york",
            &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        )
    );
    // 1 November has 25 hours in New York but 24 local hours: 00:00 EDT (04:00 UTC) to
    // 23:00 EST (2 November 04:00 UTC), with 01:00 once.
    let hourly: Vec<_> = seen
        .iter()
        .filter(|(n, _)| n == "new_york_hourly")
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(hourly.len(), 24, "{hourly:?}");
    assert_eq!(
        hourly[..4],
        [
            "2026-11-01T04:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z",
        ]
    );
    assert_eq!(hourly[23], "2026-11-02T04:00:00Z");
    // Crontab jobs carry graphile's `_cron` entry with their tick.
    let jobs = queue
        .list_jobs(JobFilter {
            limit: Some(100),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    let first_hourly = jobs
        .iter()
        .find(|j| j.payload.get("source").is_some())
        .expect("a crontab job");
    assert_eq!(
        first_hourly.payload,
        json!({"source": "crontab", "_cron": {"ts": "2026-11-01T04:00:00.000Z", "backfilled": false}})
    );
    assert_eq!(first_hourly.max_attempts, 25, "graphile's default attempts");
}

#[tokio::test]
async fn add_crontab_adds_every_line_or_none() {
    let (queue, clock) = queue_at("2026-01-01T00:00:00Z");
    let names = queue
        .add_crontab(
            "# maintenance\n\
             0 4 * * * tick\n\
             \n\
             */15 * * * * tick ?id=often&fill=1h&max=3&queue=serial&priority=5\n",
        )
        .await
        .expect("adds");
    assert_eq!(names, ["tick", "often"]);
    // An unknown task on any line adds nothing, not even the lines before it.
    let unknown = queue
        .add_crontab("0 5 * * * tick ?id=fine\n0 6 * * * missing_task")
        .await
        .expect_err("unknown task");
    assert!(
        matches!(unknown, Error::UnknownTask(ref t) if t == "missing_task"),
        "{unknown}"
    );
    let bad = queue
        .add_crontab("0 5 * * * tick ?id=fine\n0 6 * * * tick ?id=late&fill=soon")
        .await
        .expect_err("bad fill");
    assert!(
        matches!(&bad, Error::InvalidOption { option: "crontab", message } if message.starts_with("crontab line 2, column 30: invalid option value")),
        "{bad}"
    );
    let names: Vec<String> = queue
        .schedules()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Re-adding the same crontab keeps the cursors: no tick is enqueued twice.
    clock.advance(Duration::from_secs(15 * 60));
    let first = queue.run_schedules(clock.now()).await.expect("pass");
    assert_eq!(first.enqueued.len(), 1);
    queue
        .add_crontab("*/15 * * * * tick ?id=often&fill=1h&max=3&queue=serial&priority=5")
        .await
        .expect("re-add");
    let again = queue.run_schedules(clock.now()).await.expect("pass");
    assert!(again.enqueued.is_empty());
    let job = queue
        .get_job(first.enqueued[0].1)
        .await
        .expect("get")
        .expect("job");
    assert_eq!((job.priority, job.max_attempts), (-5, 3));
    assert_eq!(job.run_at, clock.now());
}

/// `Schedule::cron` reads five numeric fields as Unix cron does (1 is Monday), so the
/// common weekday expression fires Monday to Friday, as it does with names.
#[test]
fn five_numeric_cron_fields_read_as_unix_cron() {
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("a valid time")
            .with_timezone(&chrono::Utc)
    };
    for expr in ["0 9 * * 1-5", "0 9 * * MON-FRI"] {
        let weekdays = Schedule::cron(expr);
        // 2026-01-01 is a Thursday.
        let mut t = at("2026-01-01T10:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..3 {
            t = weekdays.next_after(t).expect("a next tick");
            fired.push(t);
        }
        assert_eq!(
            fired,
            [
                at("2026-01-02T09:00:00Z"),
                at("2026-01-05T09:00:00Z"),
                at("2026-01-06T09:00:00Z")
            ],
            "{expr}: Friday, then Monday and Tuesday"
        );
    }
    // Sunday is 0 or 7.
    let sunday = at("2026-01-04T09:00:00Z");
    for expr in ["0 9 * * 0", "0 9 * * 7"] {
        assert_eq!(
            Schedule::cron(expr).next_after(at("2026-01-01T10:00:00Z")),
            Some(sunday),
            "{expr}"
        );
    }
}
