use super::*;
use chrono::DateTime;
use serde_json::json;

/// The schedule a crontab line with these parts should give, before its options.
fn base(expr: &str, task: &str, payload: Value) -> Schedule {
    let mut s = Schedule::with_spec(Spec::Cron { expr: expr.into() })
        .task(task, &payload)
        .options(JobOptions::new().retries(DEFAULT_MAX_ATTEMPTS - 1))
        .catch_up(CatchUp::Skip)
        .tick_in_payload(true);
    s.cron_dialect = CronDialect::Unix;
    s
}

fn one(line: &str) -> CrontabEntry {
    let mut entries = parse(line).unwrap_or_else(|e| panic!("`{line}` should parse: {e}"));
    assert_eq!(entries.len(), 1);
    entries.remove(0)
}

/// The line, column and kind of the error `text` gives.
fn error(text: &str) -> (usize, usize, CrontabErrorKind) {
    let e = parse(text).expect_err(text);
    (e.line(), e.column(), e.kind())
}

#[test]
fn a_bare_line_is_a_unix_cron_schedule_named_after_its_task() {
    let e = one("0 4 * * * nightly_cleanup");
    assert_eq!(e.name, "nightly_cleanup");
    assert_eq!(e.line, 1);
    assert_eq!(e.schedule, base("0 4 * * *", "nightly_cleanup", json!({})));
}

#[test]
fn option_id_names_the_schedule() {
    let e = one("0 4 * * * rollup ?id=rollup_eu");
    assert_eq!(e.name, "rollup_eu");
    assert_eq!(e.schedule, base("0 4 * * *", "rollup", json!({})));
}

#[test]
fn option_fill_backfills_within_a_time_phrase_and_no_fill_skips() {
    let e = one("0 4 * * * t ?fill=1d");
    assert_eq!(
        e.schedule.catch_up,
        CatchUp::Backfill {
            window_secs: 86_400
        }
    );
    let e = one("0 4 * * * t ?fill=4w3d2h1m30s");
    assert_eq!(
        e.schedule.catch_up,
        CatchUp::Backfill {
            window_secs: 44_761 * 60 + 30
        }
    );
    assert_eq!(one("0 4 * * * t ?fill=0m").schedule.catch_up, CatchUp::Skip);
    assert_eq!(one("0 4 * * * t").schedule.catch_up, CatchUp::Skip);
    assert_eq!(time_phrase("90s"), Some(90));
    assert_eq!(time_phrase("1h30"), None);
    assert_eq!(time_phrase("h"), None);
    assert_eq!(time_phrase("99999999999999999999w"), None);
}

#[test]
fn option_max_sets_attempts_and_the_default_is_graphiles() {
    let e = one("0 4 * * * t ?max=5");
    assert_eq!(e.schedule.options, JobOptions::new().retries(4));
    let e = one("0 4 * * * t ?max=1");
    assert_eq!(e.schedule.options, JobOptions::new().retries(0));
    assert_eq!(
        one("0 4 * * * t").schedule.options,
        JobOptions::new().retries(24)
    );
}

#[test]
fn option_queue_serializes_like_a_graphile_named_queue() {
    let e = one("0 4 * * * t ?queue=reports:eu");
    assert_eq!(
        e.schedule.options,
        JobOptions::new().retries(24).serial_key("reports:eu")
    );
}

#[test]
fn option_priority_is_negated_since_graphile_runs_smaller_first() {
    let e = one("0 4 * * * t ?priority=1");
    assert_eq!(
        e.schedule.options,
        JobOptions::new().retries(24).priority(-1)
    );
    let e = one("0 4 * * * t ?priority=-32768");
    assert_eq!(
        e.schedule.options,
        JobOptions::new().retries(24).priority(32_768)
    );
}

#[test]
fn options_job_key_and_mode_map_to_key_modes() {
    let e = one("0 4 * * * t ?jobKey=nightly");
    assert_eq!(
        e.schedule.options,
        JobOptions::new()
            .retries(24)
            .job_key("nightly", KeyMode::Replace)
    );
    let e = one("0 4 * * * t ?jobKey=nightly&jobKeyMode=preserve_run_at");
    assert_eq!(
        e.schedule.options,
        JobOptions::new()
            .retries(24)
            .job_key("nightly", KeyMode::PreserveRunAt)
    );
    // Query-string encoding, as graphile reads options.
    let e = one("0 4 * * * t ?jobKey=a%20b+c%2Fd&jobKeyMode=replace");
    assert_eq!(
        e.schedule.options,
        JobOptions::new()
            .retries(24)
            .job_key("a b c/d", KeyMode::Replace)
    );
}

#[test]
fn option_tz_reads_the_fields_in_a_named_zone() {
    let e = one("30 2 * * * backup ?tz=Europe/Berlin");
    assert_eq!(e.schedule.time_zone(), Some("Europe/Berlin"));
    assert_eq!(
        e.schedule,
        base("30 2 * * *", "backup", json!({})).in_zone("Europe/Berlin")
    );
    // 02:30 is skipped on 29 March 2026 in Berlin: the tick runs at 03:00 CEST.
    let before = DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    assert_eq!(
        e.schedule.next_after(before).map(|t| t.to_rfc3339()),
        Some("2026-03-29T01:00:00+00:00".to_string())
    );
}

#[test]
fn all_options_together() {
    let e = one(
        "0 4 * * * send ?fill=1d&max=5&id=name&queue=q&priority=1&jobKey=k&jobKeyMode=replace&tz=America/New_York {\"json\":\"payload\"}",
    );
    assert_eq!(e.name, "name");
    let expected = base("0 4 * * *", "send", json!({"json": "payload"}))
        .options(
            JobOptions::new()
                .retries(4)
                .serial_key("q")
                .priority(-1)
                .job_key("k", KeyMode::Replace),
        )
        .catch_up(CatchUp::Backfill {
            window_secs: 86_400,
        })
        .in_zone("America/New_York");
    assert_eq!(e.schedule, expected);
}

#[test]
fn payloads_are_json_or_json5_objects() {
    let e = one("30 4 * * 1 send_weekly_email ?fill=2d&max=10 {onboarding:false}");
    assert_eq!(e.schedule.payload, json!({"onboarding": false}));
    let e = one(r#"0 4 * * * t {"json": "payload", "n": [1, 2]}"#);
    assert_eq!(e.schedule.payload, json!({"json": "payload", "n": [1, 2]}));
    // Without options the payload follows the task.
    let e = one("0 4 * * * t {a: 'b', }   ");
    assert_eq!(e.schedule.payload, json!({"a": "b"}));
}

#[test]
fn each_job_payload_carries_graphiles_cron_entry() {
    let e = one("0 4 * * * t {region:'eu'}");
    let tick = DateTime::parse_from_rfc3339("2026-03-29T04:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    assert_eq!(
        e.schedule.payload_for(tick, true),
        json!({"region": "eu", "_cron": {"ts": "2026-03-29T04:00:00.000Z", "backfilled": true}})
    );
}

#[test]
fn a_multi_line_file_with_comments_blank_lines_and_crlf() {
    let text = "# ┌ minute\r\n\
                # │ ┌ hour\r\n\
                \r\n\
                0 4 * * *  nightly_cleanup\r\n\
                \t30 4 * * 1 send_weekly_email ?fill=2d&max=10 {onboarding:false}\r\n\
                   \r\n\
                0 */4 * * * rollup ?id=rollup_eu&tz=Europe/Berlin {\"region\":\"eu\"}\r\n\
                0 */4 * * * rollup ?id=rollup_us&tz=America/New_York {\"region\":\"us\"}\n\
                # the end";
    let entries = parse(text).expect("parses");
    let seen: Vec<(&str, usize, &str)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.line, e.schedule.task.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("nightly_cleanup", 4, "nightly_cleanup"),
            ("send_weekly_email", 5, "send_weekly_email"),
            ("rollup_eu", 7, "rollup"),
            ("rollup_us", 8, "rollup"),
        ]
    );
    assert_eq!(entries[2].schedule.time_zone(), Some("Europe/Berlin"));
    assert_eq!(entries[3].schedule.payload, json!({"region": "us"}));
    assert!(parse("").expect("empty").is_empty());
    assert!(parse("# only a comment\n\n").expect("comments").is_empty());
}

#[test]
fn time_field_errors_name_line_and_column() {
    use CrontabErrorKind::*;
    assert_eq!(error("0 4 * *"), (1, 8, MissingField));
    assert_eq!(error("# c\n0 4 * JAN * t"), (2, 7, InvalidField));
    assert_eq!(error("0 4 1,,2 * * t"), (1, 7, InvalidField));
    assert_eq!(error("60 4 * * * t"), (1, 1, OutOfRange));
    assert_eq!(error("0 4 * * 1,8 t"), (1, 11, OutOfRange));
    assert_eq!(error("  0 4 0 * * t"), (1, 7, OutOfRange));
    assert_eq!(error("0 9-5 * * * t"), (1, 3, EmptyRange));
    assert_eq!(error("*/0 * * * * t"), (1, 3, InvalidStep));
    assert_eq!(error("5/15 * * * * t"), (1, 1, InvalidStep));
    assert_eq!(error("0 0 31 2,4 * t"), (1, 5, NeverFires));
}

#[test]
fn task_errors_name_line_and_column() {
    use CrontabErrorKind::*;
    assert_eq!(error("0 4 * * *"), (1, 10, InvalidTask));
    assert_eq!(error("0 4 * * * 9lives"), (1, 11, InvalidTask));
    // Six time fields (seconds first) leave a `*` where the task belongs.
    assert_eq!(error("0 0 4 * * * t"), (1, 11, InvalidTask));
    let e = parse("0 4 * * * dir/task").expect_err("slash");
    assert_eq!((e.column(), e.kind()), (14, InvalidTask));
    assert!(e.expected().contains("without `/`"), "{e}");
}

#[test]
fn option_errors_name_line_and_column() {
    use CrontabErrorKind::*;
    assert_eq!(error("0 4 * * * t ?"), (1, 14, InvalidOptions));
    assert_eq!(error("0 4 * * * t ?fill"), (1, 14, InvalidOptions));
    assert_eq!(error("0 4 * * * t ?id=a%zz"), (1, 18, InvalidOptions));
    assert_eq!(
        error("0 4 * * * t ?fill=1d&every=2"),
        (1, 22, UnknownOption)
    );
    assert_eq!(error("0 4 * * * t ?max=1&max=2"), (1, 20, DuplicateOption));
    assert_eq!(error("0 4 * * * t ?fill=1x"), (1, 19, InvalidOptionValue));
    assert_eq!(error("0 4 * * * t ?max=0"), (1, 18, InvalidOptionValue));
    assert_eq!(error("0 4 * * * t ?max=10002"), (1, 18, InvalidOptionValue));
    assert_eq!(
        error("0 4 * * * t ?priority=40000"),
        (1, 23, InvalidOptionValue)
    );
    assert_eq!(error("0 4 * * * t ?queue=a/b"), (1, 20, InvalidOptionValue));
    assert_eq!(error("0 4 * * * t ?id=9x"), (1, 17, InvalidOptionValue));
    assert_eq!(error("0 4 * * * t ?jobKey="), (1, 21, InvalidOptionValue));
    assert_eq!(
        error("0 4 * * * t ?jobKeyMode=unsafe_dedupe&jobKey=k"),
        (1, 25, InvalidOptionValue)
    );
    assert_eq!(
        error("0 4 * * * t ?max=3&jobKeyMode=replace"),
        (1, 20, InvalidOptionValue)
    );
    let e = parse("0 4 * * * t ?tz=Mars/Olympus").expect_err("zone");
    assert_eq!((e.line(), e.column(), e.kind()), (1, 17, UnknownTimeZone));
    assert_eq!(e.found(), "`Mars/Olympus`");
}

#[test]
fn payload_and_trailing_text_errors_name_line_and_column() {
    use CrontabErrorKind::*;
    assert_eq!(error("0 4 * * * t {a:1,,}"), (1, 18, InvalidPayload));
    assert_eq!(error("0 4 * * * t {a:1} extra"), (1, 19, InvalidPayload));
    // Columns count characters, not bytes.
    assert_eq!(error("0 4 * * * t {a:'é',,}"), (1, 20, InvalidPayload));
    assert_eq!(error("0 4 * * * t extra"), (1, 13, UnexpectedText));
    assert_eq!(error("0 4 * * * t [1]"), (1, 13, UnexpectedText));
    assert_eq!(
        error("0 4 * * * t ?max=2 ?fill=1d"),
        (1, 20, UnexpectedText)
    );
}

#[test]
fn duplicate_names_point_at_the_second_one() {
    use CrontabErrorKind::*;
    let e = parse("0 4 * * * t\n\n0 5 * * * t").expect_err("same task");
    assert_eq!((e.line(), e.column(), e.kind()), (3, 11, DuplicateName));
    assert!(e.expected().contains("line 1"), "{e}");
    assert_eq!(
        error("0 4 * * * a ?id=x\n0 5 * * * b ?id=x"),
        (2, 17, DuplicateName)
    );
    // Distinct ids make the same task twice fine.
    assert_eq!(
        parse("0 4 * * * t ?id=t_early\n0 5 * * * t")
            .expect("distinct")
            .len(),
        2
    );
}

#[test]
fn messages_say_where_what_was_expected_and_what_was_found() {
    let e = parse("0 4 * * * t ?every=2").expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "crontab line 1, column 14: unknown option: expected one of `id`, `fill`, `max`, \
         `queue`, `priority`, `jobKey`, `jobKeyMode`, `tz`, found `every`"
    );
}
