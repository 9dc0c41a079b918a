//! One job: its fields, payload, result and error, the attempt history, the checkpoint
//! timeline and the workflow tree (parent, children, bundle), with its actions.

use crate::html::{self, esc, url, w};
use crate::page::{Frame, Nav};
use crate::router::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use durable_jobs::manage::DETAILS_CHILDREN_LIMIT;
use durable_jobs::{Checkpoint, CheckpointOutcome, Job, JobId, JobStatus, Storage, BUNDLE_TASK};
use serde_json::Value;
use std::sync::Arc;

/// Child ids a spawn checkpoint links to; past this, a count.
const MAX_CHILDREN_SHOWN: usize = 200;

/// One attempt as the page shows it.
struct Attempt {
    attempt: i32,
    worker: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    error: Option<String>,
}

/// Everything the page shows, read through the public `Queue` API.
struct Detail {
    job: Job,
    checkpoints: Vec<Checkpoint>,
    attempts: Vec<Attempt>,
    children: Vec<Job>,
    parent: Option<Job>,
}

async fn load(app: &App, id: JobId) -> durable_jobs::Result<Option<Detail>> {
    let Some(details) = app.queue.job_details(id).await? else {
        return Ok(None);
    };
    let parent = match details.job.parent_id {
        Some(p) => app.queue.get_job(p).await?,
        None => None,
    };
    let attempts = details
        .attempts
        .into_iter()
        .map(|a| Attempt {
            attempt: a.attempt,
            worker: a.worker,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome.as_str().to_string(),
            error: a.error,
        })
        .collect();
    Ok(Some(Detail {
        job: details.job,
        checkpoints: details.checkpoints,
        attempts,
        children: details.children,
        parent,
    }))
}

/// GET `/jobs/{id}`.
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    frame: Frame,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let not_found = || frame.error(StatusCode::NOT_FOUND, &format!("No job has id {id}."));
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let fail = |e: durable_jobs::Error| frame.storage_error(&e);
    let now = app.queue.storage().now().await.map_err(fail)?;
    let detail = load(&app, id).await.map_err(fail)?.ok_or_else(not_found)?;
    let job = &detail.job;

    let mut body = String::new();
    w!(
        body,
        "<h1>Job #{} <code id=\"task\">{}</code> {}</h1>",
        job.id,
        esc(&job.task),
        html::status(job.status)
    );
    actions(&mut body, &frame, job);
    body.push_str("<div class=\"grid\"><section><h2>Fields</h2>");
    fields(&mut body, &frame, job, now);
    body.push_str("</section><section><h2>Workflow</h2>");
    tree(&mut body, &frame, &detail);
    body.push_str("</section></div>");

    w!(
        body,
        "<section><h2>Payload</h2>{}</section>",
        html::json_block(&job.payload, "payload")
    );
    if let Some(result) = &job.result {
        w!(
            body,
            "<section><h2>Result</h2>{}</section>",
            html::json_block(result, "result")
        );
    }
    if let Some(progress) = &job.progress {
        w!(
            body,
            "<section><h2>Progress</h2>{}</section>",
            html::json_block(progress, "progress")
        );
    }
    if let Some(error) = &job.last_error {
        w!(
            body,
            "<section><h2>Last error</h2><pre class=\"error\" id=\"last-error\">{}</pre></section>",
            esc(error)
        );
    }
    attempts(&mut body, &detail.attempts, now);
    timeline(&mut body, &frame, &detail.checkpoints, job.created_at);
    Ok(frame.page(&format!("Job #{}", job.id), Nav::Jobs, &body))
}

fn actions(body: &mut String, frame: &Frame, job: &Job) {
    if frame.read_only {
        return;
    }
    let path = format!("/jobs/{}", job.id);
    body.push_str("<div class=\"actions-bar\" id=\"actions\">");
    if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
        body.push_str(&frame.action(&format!("{path}/retry"), "Retry", "", None));
        body.push_str(&frame.action(
            &format!("{path}/retry-keep"),
            "Retry, keep checkpoints",
            "subtle",
            None,
        ));
    }
    if !job.status.is_finished() {
        body.push_str(&frame.action(
            &format!("{path}/cancel"),
            "Cancel",
            "danger",
            Some("Cancel this job and its unfinished children?"),
        ));
    }
    if job.status != JobStatus::Running {
        body.push_str(&frame.action(
            &format!("{path}/delete"),
            "Delete",
            "danger",
            Some("Delete this job for good?"),
        ));
    }
    body.push_str("</div>");
}

fn row(body: &mut String, label: &str, value: &str) {
    w!(body, "<tr><th>{}</th><td>{value}</td></tr>", esc(label));
}

fn fields(body: &mut String, frame: &Frame, job: &Job, now: DateTime<Utc>) {
    body.push_str("<table class=\"fields\" id=\"fields\"><tbody>");
    row(
        body,
        "queue",
        &format!(
            "<a href=\"{}\">{}</a>",
            esc(&frame.href(&format!("/jobs?queue={}", url(&job.queue)))),
            esc(&job.queue)
        ),
    );
    row(body, "priority", &job.priority.to_string());
    row(
        body,
        "attempt",
        &format!("{} of {}", job.attempt, job.max_attempts),
    );
    row(body, "run at", &html::time_ago(job.run_at, now));
    row(body, "created", &html::time_ago(job.created_at, now));
    row(body, "started", &html::opt_time_ago(job.started_at, now));
    row(body, "finished", &html::opt_time_ago(job.completed_at, now));
    row(body, "updated", &html::time_ago(job.updated_at, now));
    if let Some(lease) = &job.lease {
        row(
            body,
            "lease",
            &format!(
                "held by <code>{}</code>, expires {}",
                esc(&lease.holder),
                html::time_ago(lease.expires_at, now)
            ),
        );
    }
    if let Some(key) = &job.dedupe_key {
        row(body, "job key", &format!("<code>{}</code>", esc(key)));
    }
    if let Some(key) = &job.serial_key {
        row(body, "serial key", &format!("<code>{}</code>", esc(key)));
    }
    if !job.tags.is_empty() {
        let tags = job
            .tags
            .iter()
            .map(|t| {
                format!(
                    "<a class=\"badge kind\" href=\"{}\">{}</a>",
                    esc(&frame.href(&format!("/jobs?tag={}", url(t)))),
                    esc(t)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        row(body, "tags", &tags);
    }
    if !job.flags.is_empty() {
        let flags = job
            .flags
            .iter()
            .map(|f| format!("<code>{}</code>", esc(f)))
            .collect::<Vec<_>>()
            .join(" ");
        row(body, "flags", &flags);
    }
    if let Some(ms) = job.timeout_ms {
        row(body, "timeout", &format!("{ms} ms per attempt"));
    }
    if let Some(trace) = &job.trace_context {
        row(body, "trace", &format!("<code>{}</code>", esc(trace)));
    }
    body.push_str("</tbody></table>");
}

fn job_link(frame: &Frame, job: &Job, attr: &str) -> String {
    format!(
        "<a href=\"{}\" {attr}=\"{}\">#{} {}</a> {}",
        esc(&frame.href(&format!("/jobs/{}", job.id))),
        job.id,
        job.id,
        esc(&job.task),
        html::status(job.status)
    )
}

fn tree(body: &mut String, frame: &Frame, detail: &Detail) {
    let job = &detail.job;
    let is_bundle = job.task == BUNDLE_TASK;
    if detail.parent.is_none()
        && job.parent_id.is_none()
        && detail.children.is_empty()
        && !is_bundle
    {
        body.push_str("<p class=\"empty\" id=\"workflow\">No parent and no children.</p>");
        return;
    }
    body.push_str("<ul class=\"tree\" id=\"workflow\">");
    let mut open = 0;
    match (&detail.parent, job.parent_id) {
        (Some(parent), _) => {
            let role = if parent.task == BUNDLE_TASK {
                "bundle"
            } else {
                "parent"
            };
            w!(
                body,
                "<li><span class=\"muted\">{role}</span> {}<ul>",
                job_link(frame, parent, "data-parent")
            );
            open += 1;
        }
        (None, Some(p)) => {
            w!(
                body,
                "<li><span class=\"muted\">parent</span> #{p} (deleted)<ul>"
            );
            open += 1;
        }
        (None, None) => {}
    }
    w!(
        body,
        "<li><strong>#{} {}</strong> {}{}",
        job.id,
        esc(&job.task),
        html::status(job.status),
        if is_bundle {
            " <span class=\"badge kind\">bundle</span>"
        } else {
            ""
        }
    );
    if !detail.children.is_empty() {
        let total = detail.children.len();
        let done = detail
            .children
            .iter()
            .filter(|c| c.status.is_finished())
            .count();
        w!(
            body,
            "<div class=\"muted\">{total} {}, {done} finished</div><ul id=\"children\">",
            if is_bundle { "members" } else { "children" }
        );
        for child in &detail.children {
            w!(body, "<li>{}</li>", job_link(frame, child, "data-child"));
        }
        body.push_str("</ul>");
        if total >= DETAILS_CHILDREN_LIMIT {
            w!(
                body,
                "<a href=\"{}\" id=\"all-children\">the first {total} are shown: all children »</a>",
                esc(&frame.href(&format!("/jobs?parent={}", job.id)))
            );
        }
    }
    body.push_str("</li>");
    for _ in 0..open {
        body.push_str("</ul></li>");
    }
    body.push_str("</ul>");
}

fn attempts(body: &mut String, attempts: &[Attempt], now: DateTime<Utc>) {
    body.push_str("<section><h2>Attempts</h2>");
    if attempts.is_empty() {
        body.push_str("<p class=\"empty\" id=\"attempts\">No attempt has started.</p></section>");
        return;
    }
    body.push_str(
        "<table id=\"attempts\"><thead><tr><th class=\"num\">#</th><th>Outcome</th><th>Worker</th>\
         <th>Started</th><th>Took</th><th>Error</th></tr></thead><tbody>",
    );
    for a in attempts {
        let worker = a.worker.as_deref().map_or_else(
            || "<span class=\"muted\">-</span>".to_string(),
            |w| format!("<code>{}</code>", esc(w)),
        );
        let took = a.finished_at.map_or_else(
            || "<span class=\"muted\">running</span>".to_string(),
            |f| html::duration(a.started_at, f),
        );
        let error = a.error.as_deref().map_or_else(String::new, |e| {
            format!(
                "<span class=\"error-message\">{}</span>",
                esc(&html::truncate(e, 300))
            )
        });
        w!(
            body,
            "<tr data-attempt=\"{n}\"><td class=\"num\">{n}</td>\
             <td><span class=\"badge outcome-{outcome}\">{outcome}</span></td>\
             <td>{worker}</td><td>{started}</td><td>{took}</td><td>{error}</td></tr>",
            n = a.attempt,
            outcome = esc(&a.outcome),
            started = html::time_ago(a.started_at, now),
        );
    }
    body.push_str("</tbody></table></section>");
}

/// What a checkpoint records, from its name: the engine names them `sleep`,
/// `signal:NAME`, `signal-deadline:NAME`, `spawn:TASK`, `join:TASK`, `version:ID`, and
/// calls and steps by their own name.
fn kind(name: &str) -> (&'static str, &str) {
    for (prefix, kind) in [
        ("signal-deadline:", "signal deadline"),
        ("signal:", "signal"),
        ("spawn:", "children"),
        ("join:", "join"),
        ("version:", "version"),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (kind, rest);
        }
    }
    if name == "sleep" {
        ("sleep", "")
    } else {
        ("call/step", name)
    }
}

/// A key's numeric segments, so `2/0` sorts after `2` and `10` after `9`.
fn key_order(key: &str) -> Vec<u64> {
    key.split('/')
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

/// When a checkpoint was written: the time of day to the millisecond (the date in its
/// title) and how long after the job was enqueued.
fn written(at: Option<DateTime<Utc>>, origin: DateTime<Utc>) -> String {
    match at {
        None => "<span class=\"muted\">time not recorded</span>".into(),
        Some(t) => format!(
            "<time datetime=\"{}\" title=\"{}\">{}</time> <span class=\"muted\">+{}</span>",
            esc(&t.to_rfc3339()),
            esc(&html::time(t)),
            t.format("%H:%M:%S%.3f"),
            html::duration(origin, t)
        ),
    }
}

fn timeline(body: &mut String, frame: &Frame, checkpoints: &[Checkpoint], origin: DateTime<Utc>) {
    body.push_str("<section><h2>Checkpoint timeline</h2>");
    if checkpoints.is_empty() {
        body.push_str("<p class=\"empty\" id=\"timeline\">No checkpoints: not a workflow, or none finished yet.</p></section>");
        return;
    }
    let mut ordered: Vec<&Checkpoint> = checkpoints.iter().collect();
    // Written order where known (an inner call finishes before its outer one), else key
    // order.
    ordered.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| key_order(&a.key).cmp(&key_order(&b.key)))
    });
    body.push_str("<ol class=\"timeline\" id=\"timeline\">");
    for c in ordered {
        let (kind, label) = kind(&c.name);
        let is_err = matches!(c.outcome, CheckpointOutcome::Err(_));
        let depth = c.key.matches('/').count();
        w!(
            body,
            "<li class=\"{} depth-{}\" data-key=\"{}\" data-name=\"{}\"><div class=\"head\">\
             <span class=\"badge kind\">{}</span><span class=\"name\">{}</span><span class=\"key\">key {}</span>\
             <span class=\"when\">{}</span></div>",
            if is_err { "err" } else { "ok" },
            depth.min(4),
            esc(&c.key),
            esc(&c.name),
            esc(kind),
            esc(if label.is_empty() { c.name.as_str() } else { label }),
            esc(&c.key),
            written(c.created_at, origin)
        );
        match &c.outcome {
            CheckpointOutcome::Ok(value) => {
                if kind == "children" {
                    child_links(body, frame, value);
                } else {
                    w!(body, "{}", html::json_block(value, ""));
                }
            }
            CheckpointOutcome::Err(e) => {
                w!(body, "<pre class=\"error\">{}</pre>", esc(e));
            }
        }
        body.push_str("</li>");
    }
    body.push_str("</ol></section>");
}

/// A spawn checkpoint's value is the array of the children's ids: links to each.
fn child_links(body: &mut String, frame: &Frame, value: &Value) {
    let ids: Vec<JobId> = value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        w!(body, "{}", html::json_block(value, ""));
        return;
    }
    body.push_str("<div class=\"spawned\">spawned ");
    for (i, id) in ids.iter().enumerate() {
        if i >= MAX_CHILDREN_SHOWN {
            w!(body, " and {} more", ids.len() - i);
            break;
        }
        w!(
            body,
            "{}<a href=\"{}\">#{id}</a>",
            if i > 0 { ", " } else { "" },
            esc(&frame.href(&format!("/jobs/{id}")))
        );
    }
    body.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_tell_their_kind() {
        assert_eq!(kind("sleep"), ("sleep", ""));
        assert_eq!(kind("signal:shipped"), ("signal", "shipped"));
        assert_eq!(
            kind("signal-deadline:shipped"),
            ("signal deadline", "shipped")
        );
        assert_eq!(kind("spawn:notify"), ("children", "notify"));
        assert_eq!(kind("join:notify"), ("join", "notify"));
        assert_eq!(kind("reserve"), ("call/step", "reserve"));
    }

    #[test]
    fn keys_sort_by_number() {
        let mut keys = vec!["10", "2/0", "2", "9"];
        keys.sort_by_key(|k| key_order(k));
        assert_eq!(keys, vec!["2", "2/0", "9", "10"]);
    }
}
