//! The schedules: when each fires, what it enqueues, its cursor and next tick, paused or
//! not.

use crate::html::{self, esc, url, w};
use crate::page::{Frame, Nav};
use crate::router::App;
use axum::extract::State;
use axum::response::Response;
use durable_jobs::schedule::Spec;
use durable_jobs::{Schedule, Storage};
use std::sync::Arc;

/// The firing rule in words.
fn describe(spec: &Spec) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    match spec {
        Spec::Every { secs } => match secs {
            s if s % 3600 == 0 => format!("every {} h", s / 3600),
            s if s % 60 == 0 => format!("every {} min", s / 60),
            s => format!("every {s} s"),
        },
        Spec::Daily { hour, minute } => format!("daily at {hour:02}:{minute:02}"),
        Spec::Weekly {
            weekday,
            hour,
            minute,
        } => format!(
            "weekly on {} at {hour:02}:{minute:02}",
            usize::try_from(*weekday)
                .ok()
                .and_then(|d| DAYS.get(d))
                .unwrap_or(&"?")
        ),
        Spec::Cron { expr } => format!("cron {expr}"),
    }
}

/// The task and queue a schedule enqueues, read from its serialized form (the fields are
/// private to core; the serialized definition is what storage holds anyway).
fn task_and_queue(schedule: &Schedule) -> (String, String) {
    let v = serde_json::to_value(schedule).unwrap_or_default();
    let task = v["task"].as_str().unwrap_or("?").to_string();
    let queue = v["options"]["queue"]
        .as_str()
        .unwrap_or(durable_jobs::job::DEFAULT_QUEUE)
        .to_string();
    (task, queue)
}

/// GET `/schedules`.
pub(crate) async fn show(State(app): State<Arc<App>>, frame: Frame) -> Result<Response, Response> {
    let fail = |e: durable_jobs::Error| frame.storage_error(&e);
    let now = app.queue.storage().now().await.map_err(fail)?;
    let schedules = app.queue.schedules().await.map_err(fail)?;
    let mut body = String::from("<h1>Schedules</h1>");
    if schedules.is_empty() {
        body.push_str("<p class=\"empty\" id=\"no-schedules\">No schedule is stored.</p>");
        return Ok(frame.page("Schedules", Nav::Schedules, &body));
    }
    body.push_str(
        "<table id=\"schedules\"><thead><tr><th>Name</th><th>Fires</th><th>Task</th><th>Queue</th>\
         <th>State</th><th>Last tick</th><th>Next tick</th><th>Last job</th><th></th></tr></thead><tbody>",
    );
    for s in &schedules {
        w!(
            body,
            "<tr id=\"schedule-{0}\" data-schedule=\"{0}\" data-paused=\"{1}\"><td>{0}</td>",
            esc(&s.name),
            s.paused
        );
        match &s.schedule {
            Ok(schedule) => {
                let (task, queue) = task_and_queue(schedule);
                w!(
                    body,
                    "<td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td>",
                    esc(&describe(schedule.spec())),
                    esc(&frame.href(&format!("/jobs?task={}", url(&task)))),
                    esc(&task),
                    esc(&queue)
                );
            }
            Err(e) => w!(
                body,
                "<td colspan=\"3\" class=\"error-message\">unreadable definition: {}</td>",
                esc(e)
            ),
        }
        w!(
            body,
            "<td>{}</td><td>{}</td><td>{}</td><td>",
            if s.paused {
                "<span class=\"badge paused\">paused</span>"
            } else {
                "<span class=\"badge alive\">active</span>"
            },
            html::time_ago(s.cursor, now),
            html::opt_time_ago(s.next_tick, now)
        );
        match s.last_job_id {
            Some(id) => w!(
                body,
                "<a href=\"{}\">#{id}</a>",
                esc(&frame.href(&format!("/jobs/{id}")))
            ),
            None => body.push_str("<span class=\"muted\">-</span>"),
        }
        body.push_str("</td><td class=\"actions\">");
        let path = format!("/schedules/{}/", url(&s.name));
        if s.paused {
            body.push_str(&frame.action(&format!("{path}resume"), "Resume", "", None));
        } else {
            body.push_str(&frame.action(&format!("{path}pause"), "Pause", "subtle", None));
        }
        body.push_str("</td></tr>");
    }
    body.push_str("</tbody></table>");
    Ok(frame.page("Schedules", Nav::Schedules, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_as_words() {
        assert_eq!(describe(&Spec::Every { secs: 30 }), "every 30 s");
        assert_eq!(describe(&Spec::Every { secs: 900 }), "every 15 min");
        assert_eq!(describe(&Spec::Every { secs: 7200 }), "every 2 h");
        assert_eq!(
            describe(&Spec::Daily { hour: 3, minute: 5 }),
            "daily at 03:05"
        );
        assert_eq!(
            describe(&Spec::Weekly {
                weekday: 0,
                hour: 9,
                minute: 0
            }),
            "weekly on Mon at 09:00"
        );
        assert_eq!(
            describe(&Spec::Cron {
                expr: "0 3 * * *".into()
            }),
            "cron 0 3 * * *"
        );
    }
}
