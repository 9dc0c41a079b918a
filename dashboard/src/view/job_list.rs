//! The job list: the CLI's filters (status, queue, task, tag, parent) and keyset
//! pagination (`after` an id, `limit`).

use crate::html::{self, esc, w};
use crate::options::MAX_PAGE_SIZE;
use crate::page::{Frame, Nav};
use crate::router::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use durable_jobs::{JobFilter, JobId, JobStatus, Storage};
use serde::Deserialize;
use std::sync::Arc;

/// The list's query string. Every field is text so an empty form field means "any" and a
/// bad value gets a page that says what is wrong, not a bare rejection.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    queue: Option<String>,
    task: Option<String>,
    tag: Option<String>,
    parent: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_id(name: &str, v: &Option<String>) -> Result<Option<JobId>, String> {
    non_empty(v)
        .map(|s| {
            s.parse::<JobId>()
                .map_err(|_| format!("`{name}` must be a job id (a whole number), found `{s}`"))
        })
        .transpose()
}

/// The filter a query asks for, or what is wrong with it.
fn filter(q: &ListQuery, page_size: usize) -> Result<JobFilter, String> {
    let statuses = match non_empty(&q.status) {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|one| {
                one.trim().parse::<JobStatus>().map_err(|_| {
                    format!(
                        "unknown status `{}`: expected one of {}",
                        one.trim(),
                        JobStatus::ALL.map(JobStatus::as_str).join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = match non_empty(&q.limit) {
        None => page_size,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                format!("`limit` must be a number from 1 to {MAX_PAGE_SIZE}, found `{s}`")
            })?,
    };
    Ok(JobFilter {
        statuses,
        queue: non_empty(&q.queue),
        task: non_empty(&q.task),
        tag: non_empty(&q.tag),
        parent_id: parse_id("parent", &q.parent)?,
        after_id: parse_id("after", &q.after)?,
        limit: Some(limit),
        ..JobFilter::default()
    })
}

/// GET `/jobs`.
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    frame: Frame,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Response> {
    let Query(q) = query.map_err(|e| frame.error(StatusCode::BAD_REQUEST, &e.body_text()))?;
    let filter = filter(&q, app.options.effective_page_size())
        .map_err(|message| frame.error(StatusCode::BAD_REQUEST, &message))?;
    let fail = |e: durable_jobs::Error| frame.storage_error(&e);
    let now = app.queue.storage().now().await.map_err(fail)?;
    let jobs = app.queue.list_jobs(filter.clone()).await.map_err(fail)?;
    let limit = filter.limit.unwrap_or(app.options.effective_page_size());

    let mut body = String::from("<h1>Jobs</h1>");
    filter_form(&mut body, &frame, &q);
    if jobs.is_empty() {
        body.push_str("<p class=\"empty\" id=\"no-jobs\">No job matches.</p>");
    } else {
        body.push_str(
            "<table class=\"jobs\" id=\"jobs\"><thead><tr><th class=\"num\">id</th><th>Task</th><th>Queue</th>\
             <th>Status</th><th class=\"num\">Attempt</th><th class=\"num\">Priority</th><th>Run at</th>\
             <th>Updated</th><th>Payload</th></tr></thead><tbody>",
        );
        for job in &jobs {
            w!(
                body,
                "<tr data-job=\"{id}\" data-status=\"{st}\"><td class=\"num\"><a href=\"{href}\">{id}</a></td>\
                 <td><a href=\"{href}\">{task}</a></td><td>{queue}</td><td>{badge}</td>\
                 <td class=\"num\">{att}/{max}</td><td class=\"num\">{prio}</td><td>{run}</td><td>{upd}</td>\
                 <td class=\"preview\"><code>{payload}</code></td></tr>",
                id = job.id,
                st = job.status.as_str(),
                href = esc(&frame.href(&format!("/jobs/{}", job.id))),
                task = esc(&job.task),
                queue = esc(&job.queue),
                badge = html::status(job.status),
                att = job.attempt,
                max = job.max_attempts,
                prio = job.priority,
                run = html::time_ago(job.run_at, now),
                upd = html::time_ago(job.updated_at, now),
                payload = html::json_preview(&job.payload, 80),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<nav class=\"pager\">");
    let base = |after: Option<String>| {
        frame.href(&format!(
            "/jobs{}",
            html::query(&[
                ("status", non_empty(&q.status)),
                ("queue", non_empty(&q.queue)),
                ("task", non_empty(&q.task)),
                ("tag", non_empty(&q.tag)),
                ("parent", non_empty(&q.parent)),
                ("limit", non_empty(&q.limit)),
                ("after", after),
            ])
        ))
    };
    if filter.after_id.is_some() {
        w!(
            body,
            "<a href=\"{}\" id=\"first-page\">« First page</a>",
            esc(&base(None))
        );
    }
    if jobs.len() >= limit {
        if let Some(last) = jobs.last() {
            w!(
                body,
                "<a href=\"{}\" id=\"next-page\">Next page »</a>",
                esc(&base(Some(last.id.to_string())))
            );
        }
    }
    w!(
        body,
        "<span class=\"muted\">{} job{} shown, by id</span></nav>",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" }
    );
    Ok(frame.page("Jobs", Nav::Jobs, &body))
}

fn filter_form(body: &mut String, frame: &Frame, q: &ListQuery) {
    let current = non_empty(&q.status).unwrap_or_default();
    w!(
        body,
        "<form method=\"get\" action=\"{}\" class=\"filters\" id=\"filters\">\
         <label>Status <select name=\"status\"><option value=\"\">any</option>",
        esc(&frame.href("/jobs"))
    );
    for s in JobStatus::ALL {
        w!(
            body,
            "<option value=\"{0}\"{1}>{0}</option>",
            s.as_str(),
            if current == s.as_str() {
                " selected"
            } else {
                ""
            }
        );
    }
    body.push_str("</select></label>");
    for (name, label, value, width) in [
        ("queue", "Queue", &q.queue, "10"),
        ("task", "Task", &q.task, "14"),
        ("tag", "Tag", &q.tag, "10"),
        ("parent", "Parent id", &q.parent, "8"),
    ] {
        w!(
            body,
            "<label>{label} <input type=\"text\" name=\"{name}\" size=\"{width}\" value=\"{}\"></label>",
            esc(&non_empty(value).unwrap_or_default())
        );
    }
    if let Some(limit) = non_empty(&q.limit) {
        w!(
            body,
            "<input type=\"hidden\" name=\"limit\" value=\"{}\">",
            esc(&limit)
        );
    }
    w!(
        body,
        "<button type=\"submit\" class=\"btn\" id=\"apply-filters\">Filter</button>\
         <a href=\"{}\" class=\"clear\">Clear</a></form>",
        esc(&frame.href("/jobs"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        ListQuery {
            status: get("status"),
            queue: get("queue"),
            task: get("task"),
            tag: get("tag"),
            parent: get("parent"),
            after: get("after"),
            limit: get("limit"),
        }
    }

    #[test]
    fn empty_fields_mean_any() -> Result<(), String> {
        let f = filter(&q(&[("status", ""), ("queue", " "), ("parent", "")]), 50)?;
        assert_eq!(f.statuses, Vec::new());
        assert_eq!(f.queue, None);
        assert_eq!(f.parent_id, None);
        assert_eq!(f.limit, Some(50));
        Ok(())
    }

    #[test]
    fn values_are_parsed() -> Result<(), String> {
        let f = filter(
            &q(&[
                ("status", "failed,cancelled"),
                ("parent", "7"),
                ("after", "20"),
                ("limit", "5"),
                ("tag", "vip"),
            ]),
            50,
        )?;
        assert_eq!(f.statuses, vec![JobStatus::Failed, JobStatus::Cancelled]);
        assert_eq!(
            (f.parent_id, f.after_id, f.limit),
            (Some(7), Some(20), Some(5))
        );
        assert_eq!(f.tag.as_deref(), Some("vip"));
        Ok(())
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let status = filter(&q(&[("status", "done")]), 50)
            .err()
            .unwrap_or_default();
        assert!(status.contains("unknown status `done`"), "{status}");
        let parent = filter(&q(&[("parent", "x")]), 50).err().unwrap_or_default();
        assert!(parent.contains("`parent` must be a job id"), "{parent}");
        let limit = filter(&q(&[("limit", "0")]), 50).err().unwrap_or_default();
        assert!(limit.contains("`limit` must be a number from 1"), "{limit}");
    }
}
