//! The overview: jobs per queue and status, the last hour's finished and failed jobs,
//! workers alive and dead, paused queues. It refreshes itself.

use crate::html::{self, esc, url, w};
use crate::page::{Frame, Nav};
use crate::router::App;
use axum::extract::State;
use axum::response::Response;
use durable_jobs::{JobStatus, QueueCount, Storage};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// GET `/`.
pub(crate) async fn show(State(app): State<Arc<App>>, frame: Frame) -> Result<Response, Response> {
    let queue = &app.queue;
    let fail = |e: durable_jobs::Error| frame.storage_error(&e);
    let now = queue.storage().now().await.map_err(fail)?;
    let counts = queue.counts().await.map_err(fail)?;
    let paused: BTreeSet<String> = queue
        .paused_queues()
        .await
        .map_err(fail)?
        .into_iter()
        .collect();
    let workers = queue.workers().await.map_err(fail)?;
    let last_hour = queue
        .finished_since(now - chrono::Duration::hours(1))
        .await
        .map_err(fail)?;
    let schedules = queue.schedules().await.map_err(fail)?;

    let refresh = app.options.refresh_interval.as_secs();
    let mut body = String::new();
    w!(body, "<h1>Overview</h1><div id=\"live\"");
    if refresh > 0 {
        w!(body, " data-refresh=\"{refresh}\"");
    }
    w!(
        body,
        "><p class=\"muted\">As of {}{}.</p>",
        esc(&html::time(now)),
        if refresh > 0 {
            format!(", refreshing every {refresh} s")
        } else {
            String::new()
        }
    );
    cards(&mut body, &counts, &last_hour, &workers);
    queues(&mut body, &frame, &counts, &paused);
    finished(&mut body, &frame, &last_hour);
    worker_table(&mut body, &workers, now);
    let paused_schedules = schedules.iter().filter(|s| s.paused).count();
    w!(
        body,
        "<section><h2>Schedules</h2><p><a href=\"{}\">{} schedule{}</a>, {} paused.</p></section></div>",
        esc(&frame.href("/schedules")),
        schedules.len(),
        if schedules.len() == 1 { "" } else { "s" },
        paused_schedules
    );
    Ok(frame.live_page("Overview", Nav::Overview, &body, refresh))
}

fn total(counts: &[QueueCount], status: JobStatus) -> u64 {
    counts
        .iter()
        .filter(|c| c.status == status)
        .map(|c| c.count)
        .sum()
}

fn cards(
    body: &mut String,
    counts: &[QueueCount],
    last_hour: &[QueueCount],
    workers: &[durable_jobs::WorkerInfo],
) {
    body.push_str("<div class=\"cards\" id=\"cards\">");
    for status in [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Waiting,
        JobStatus::Retrying,
        JobStatus::Failed,
    ] {
        w!(
            body,
            "<div class=\"card status-{0}\" data-card=\"{0}\"><span class=\"value\">{1}</span><span class=\"label\">{0}</span></div>",
            status.as_str(),
            total(counts, status)
        );
    }
    w!(
        body,
        "<div class=\"card\" data-card=\"completed-hour\"><span class=\"value\">{}</span><span class=\"label\">completed, last hour</span></div>",
        total(last_hour, JobStatus::Completed)
    );
    w!(
        body,
        "<div class=\"card status-failed\" data-card=\"failed-hour\"><span class=\"value\">{}</span><span class=\"label\">failed, last hour</span></div>",
        total(last_hour, JobStatus::Failed)
    );
    let alive = workers.iter().filter(|w| !w.dead).count();
    w!(
        body,
        "<div class=\"card\" data-card=\"workers\"><span class=\"value\">{alive}</span><span class=\"label\">workers alive</span></div></div>"
    );
}

fn queues(body: &mut String, frame: &Frame, counts: &[QueueCount], paused: &BTreeSet<String>) {
    let mut by_queue: BTreeMap<&str, BTreeMap<JobStatus, u64>> = BTreeMap::new();
    for c in counts {
        *by_queue
            .entry(c.queue.as_str())
            .or_default()
            .entry(c.status)
            .or_default() += c.count;
    }
    for p in paused {
        by_queue.entry(p.as_str()).or_default();
    }
    body.push_str("<section><h2>Queues</h2>");
    if by_queue.is_empty() {
        body.push_str("<p class=\"empty\">No jobs yet.</p></section>");
        return;
    }
    body.push_str("<table class=\"counts\" id=\"queues\"><thead><tr><th>Queue</th>");
    for status in JobStatus::ALL {
        w!(body, "<th class=\"num\">{}</th>", status.as_str());
    }
    body.push_str("<th class=\"num\">total</th><th></th></tr></thead><tbody>");
    for (name, row) in &by_queue {
        let is_paused = paused.contains(*name);
        w!(
            body,
            "<tr data-queue=\"{0}\"><td><a href=\"{1}\">{0}</a>{2}</td>",
            esc(name),
            esc(&frame.href(&format!("/jobs?queue={}", url(name)))),
            if is_paused {
                " <span class=\"badge paused\">paused</span>"
            } else {
                ""
            }
        );
        for status in JobStatus::ALL {
            let n = row.get(&status).copied().unwrap_or(0);
            count_cell(body, frame, Some(name), status, n);
        }
        w!(
            body,
            "<td class=\"num\" data-count=\"total\">{}</td><td class=\"actions\">",
            row.values().sum::<u64>()
        );
        let path = format!("/queues/{}/", url(name));
        if is_paused {
            body.push_str(&frame.action(&format!("{path}resume"), "Resume", "", None));
        } else {
            body.push_str(&frame.action(&format!("{path}pause"), "Pause", "subtle", None));
        }
        body.push_str("</td></tr>");
    }
    body.push_str("</tbody><tfoot><tr data-queue=\"*\"><th>all queues</th>");
    for status in JobStatus::ALL {
        count_cell(body, frame, None, status, total(counts, status));
    }
    w!(
        body,
        "<td class=\"num\" data-count=\"total\">{}</td><td></td></tr></tfoot></table></section>",
        counts.iter().map(|c| c.count).sum::<u64>()
    );
}

fn count_cell(body: &mut String, frame: &Frame, queue: Option<&str>, status: JobStatus, n: u64) {
    if n == 0 {
        w!(
            body,
            "<td class=\"num zero\" data-count=\"{}\">0</td>",
            status.as_str()
        );
        return;
    }
    let mut link = format!("/jobs?status={}", status.as_str());
    if let Some(q) = queue {
        w!(link, "&queue={}", url(q));
    }
    w!(
        body,
        "<td class=\"num\" data-count=\"{}\"><a href=\"{}\">{n}</a></td>",
        status.as_str(),
        esc(&frame.href(&link))
    );
}

fn finished(body: &mut String, frame: &Frame, last_hour: &[QueueCount]) {
    body.push_str("<section><h2>Finished in the last hour</h2>");
    if last_hour.is_empty() {
        body.push_str(
            "<p class=\"empty\" id=\"last-hour\">No job finished in the last hour.</p></section>",
        );
        return;
    }
    let mut by_queue: BTreeMap<&str, BTreeMap<JobStatus, u64>> = BTreeMap::new();
    for c in last_hour {
        *by_queue
            .entry(c.queue.as_str())
            .or_default()
            .entry(c.status)
            .or_default() += c.count;
    }
    let finals = [
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
    body.push_str("<table class=\"counts\" id=\"last-hour\"><thead><tr><th>Queue</th>");
    for s in finals {
        w!(body, "<th class=\"num\">{}</th>", s.as_str());
    }
    body.push_str("</tr></thead><tbody>");
    for (name, row) in &by_queue {
        w!(
            body,
            "<tr data-queue=\"{0}\"><td><a href=\"{1}\">{0}</a></td>",
            esc(name),
            esc(&frame.href(&format!("/jobs?queue={}", url(name))))
        );
        for s in finals {
            let n = row.get(&s).copied().unwrap_or(0);
            w!(
                body,
                "<td class=\"num{}\" data-count=\"{}\">{n}</td>",
                if n == 0 { " zero" } else { "" },
                s.as_str()
            );
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table></section>");
}

fn worker_table(
    body: &mut String,
    workers: &[durable_jobs::WorkerInfo],
    now: chrono::DateTime<chrono::Utc>,
) {
    body.push_str("<section><h2>Workers</h2>");
    if workers.is_empty() {
        body.push_str("<p class=\"empty\" id=\"workers\">No worker is registered.</p></section>");
        return;
    }
    body.push_str(
        "<table id=\"workers\"><thead><tr><th>Worker</th><th>State</th><th>Host</th><th class=\"num\">pid</th>\
         <th>Queues</th><th>Version</th><th>Started</th><th>Last seen</th></tr></thead><tbody>",
    );
    for w in workers {
        let r = &w.record;
        let queues = r
            .queues
            .iter()
            .map(|q| format!("{} ×{}", q.name, q.concurrency))
            .collect::<Vec<_>>()
            .join(", ");
        w!(
            body,
            "<tr data-worker=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td class=\"num\">{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td></tr>",
            esc(&r.name),
            if w.dead {
                "<span class=\"badge dead\" data-state=\"dead\">dead</span>"
            } else {
                "<span class=\"badge alive\" data-state=\"alive\">alive</span>"
            },
            esc(&r.host),
            r.pid,
            esc(&queues),
            esc(&r.version),
            html::time_ago(r.started_at, now),
            html::time_ago(r.last_seen, now)
        );
    }
    body.push_str("</tbody></table></section>");
}
