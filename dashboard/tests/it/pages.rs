//! The browser cases, each run on SQLite and on PostgreSQL (see `main.rs`). Every case
//! seeds its own storage, serves the dashboard under `/admin/jobs` and drives its own
//! headless Chromium.

use crate::fixture::{Backend, Fixture, IMG_NOTE, MOUNT, SCRIPT_NOTE};
use crate::http;
use crate::webdriver::{Browser, Lease, SharedBrowser};
use durable_jobs::{JobFilter, JobStatus};
use durable_jobs_dashboard::DashboardOptions;
use std::time::Duration;

/// A seeded fixture and the shared browser. Dropped in reverse order: the browser is
/// released, the fixture's storage goes, then the lease.
fn setup(backend: Backend, case: &str) -> (Lease, Fixture, SharedBrowser) {
    let lease = Lease::new();
    let fixture = Fixture::new(backend);
    let browser = lease.browser(&format!("{}-{case}", backend.name()));
    (lease, fixture, browser)
}

/// The text of the first element matching `css`, waiting for one to exist.
fn text_of(b: &Browser, css: &str) -> String {
    let mut text = None;
    b.wait_until(&format!("`{css}` is on the page"), |b| {
        text = b.text_at(css);
        text.is_some()
    });
    text.unwrap_or_default()
}

pub fn overview_shows_the_counts(backend: Backend) {
    let (_lease, mut f, b) = setup(backend, "overview");
    // A dashboard that refreshes every second, to see the page update by itself.
    let fast = f.serve(DashboardOptions::new().refresh_interval(Duration::from_secs(1)));
    b.goto(&Fixture::url_at(fast, "/"));
    b.wait_for("#queues");
    assert_eq!(b.title(), "Overview · durable-jobs");

    let counts = f.rt.block_on(f.queue.counts()).expect("counts");
    assert!(!counts.is_empty());
    for c in &counts {
        let css = format!(
            "#queues tr[data-queue=\"{}\"] td[data-count=\"{}\"]",
            c.queue,
            c.status.as_str()
        );
        assert_eq!(text_of(&b, &css), c.count.to_string(), "{css}");
    }
    let total = |s: JobStatus| -> u64 {
        counts
            .iter()
            .filter(|c| c.status == s)
            .map(|c| c.count)
            .sum()
    };
    // Known figures from the seed: 1 failed, 1 running (queue `slow`), 3 emails completed.
    assert_eq!(total(JobStatus::Failed), 1);
    assert_eq!(
        text_of(
            &b,
            "#queues tr[data-queue=\"slow\"] td[data-count=\"running\"]"
        ),
        "1"
    );
    assert_eq!(
        text_of(
            &b,
            "#queues tr[data-queue=\"emails\"] td[data-count=\"completed\"]"
        ),
        "3"
    );
    assert_eq!(
        text_of(
            &b,
            "#queues tr[data-queue=\"emails\"] td[data-count=\"failed\"]"
        ),
        "0"
    );
    for status in JobStatus::ALL {
        assert_eq!(
            text_of(
                &b,
                &format!(
                    "#queues tr[data-queue=\"*\"] td[data-count=\"{}\"]",
                    status.as_str()
                )
            ),
            total(status).to_string(),
            "all-queues total of {status}"
        );
    }
    assert_eq!(text_of(&b, "[data-card=\"failed\"] .value"), "1");
    assert_eq!(text_of(&b, "[data-card=\"running\"] .value"), "1");
    // Everything the seed finished, it finished within the last hour.
    assert_eq!(
        text_of(&b, "[data-card=\"completed-hour\"] .value"),
        total(JobStatus::Completed).to_string()
    );
    assert_eq!(text_of(&b, "[data-card=\"failed-hour\"] .value"), "1");
    assert_eq!(
        text_of(
            &b,
            "#last-hour tr[data-queue=\"emails\"] td[data-count=\"completed\"]"
        ),
        "3"
    );
    // The paused queue and the workers, dead and alive.
    assert!(text_of(&b, "#queues tr[data-queue=\"media\"]").contains("paused"));
    assert_eq!(
        text_of(&b, "#workers tr[data-worker=\"web-1\"] [data-state]"),
        "alive"
    );
    assert_eq!(
        text_of(&b, "#workers tr[data-worker=\"old-box\"] [data-state]"),
        "dead"
    );
    assert_eq!(text_of(&b, "[data-card=\"workers\"] .value"), "1");
    b.screenshot_full("overview");

    // The page refreshes by itself: a job enqueued now shows up without a reload.
    b.exec("window.__sameDocument = true; return null;", vec![]);
    f.rt.block_on(f.queue.enqueue(
        "send_email",
        &"fresh@example.com",
        durable_jobs::JobOptions::new().queue("fresh"),
    ))
    .expect("enqueue");
    b.wait_until("the new queue appears on the overview", |b| {
        b.find("#queues tr[data-queue=\"fresh\"] td[data-count=\"pending\"]")
            .is_some()
    });
    assert_eq!(
        b.exec("return window.__sameDocument === true;", vec![]),
        serde_json::json!(true),
        "refreshed in place, not reloaded"
    );
}

pub fn a_filter_narrows_the_list(backend: Backend) {
    let (_lease, f, b) = setup(backend, "filter");
    b.goto(&f.url("/jobs"));
    b.wait_for("#jobs");
    let all = b.find_all("#jobs tbody tr").len();
    let stored =
        f.rt.block_on(f.queue.list_jobs(JobFilter::default()))
            .expect("list")
            .len();
    assert_eq!(all, stored, "the unfiltered list shows every job");

    // Choose a status in the form and submit it.
    let option = b.wait_for("select[name=status] option[value=failed]");
    b.click(&option);
    b.click(&b.wait_for("#apply-filters"));
    b.wait_until("the list is filtered by status", |b| {
        b.url().contains("status=failed")
    });
    let rows = b.find_all("#jobs tbody tr");
    assert_eq!(rows.len(), 1, "one failed job");
    assert_eq!(b.attr(&rows[0], "data-status").as_deref(), Some("failed"));
    assert_eq!(
        b.attr(&rows[0], "data-job").as_deref(),
        Some(f.seeded.failed.to_string().as_str())
    );

    // A tag filter, typed, with no status.
    b.click(&b.wait_for("select[name=status] option[value='']"));
    let tag = b.wait_for("input[name=tag]");
    b.type_text(&tag, "vip");
    b.click(&b.wait_for("#apply-filters"));
    b.wait_until("the list is filtered by tag", |b| {
        let u = b.url();
        u.contains("tag=vip") && !u.contains("status=failed")
    });
    let mut ids: Vec<String> = b
        .find_all("#jobs tbody tr")
        .iter()
        .filter_map(|r| b.attr(r, "data-job"))
        .collect();
    ids.sort();
    let mut expected: Vec<String> = [f.seeded.completed, f.seeded.failed, f.seeded.workflow]
        .iter()
        .map(ToString::to_string)
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "the jobs tagged vip");
    b.screenshot("filtered");

    // Children of the workflow, through the parent filter.
    b.goto(&f.url(&format!("/jobs?parent={}", f.seeded.workflow)));
    b.wait_for("#jobs");
    let tasks: Vec<String> = b
        .find_all("#jobs tbody tr td:nth-child(2)")
        .iter()
        .map(|c| b.text(c))
        .collect();
    assert_eq!(tasks, vec!["notify", "notify"]);

    // Keyset pagination: three at a time, the next page starts after the last id.
    b.goto(&f.url("/jobs?limit=3"));
    b.wait_for("#jobs");
    let first: Vec<i64> = job_ids(&b);
    assert_eq!(first.len(), 3);
    b.click(&b.wait_for("#next-page"));
    let last = first[2];
    b.wait_until("the second page is shown", |b| {
        b.url().contains(&format!("after={last}"))
    });
    let second = job_ids(&b);
    assert!(
        !second.is_empty() && second.iter().all(|id| *id > last),
        "{second:?} after {last}"
    );
    assert!(b.find("#first-page").is_some());
}

fn job_ids(b: &Browser) -> Vec<i64> {
    b.find_all("#jobs tbody tr")
        .iter()
        .filter_map(|r| b.attr(r, "data-job"))
        .filter_map(|id| id.parse().ok())
        .collect()
}

pub fn a_workflow_shows_its_timeline_and_children(backend: Backend) {
    let (_lease, f, b) = setup(backend, "workflow");
    let wf = f.seeded.workflow;
    b.goto(&f.url(&format!("/jobs/{wf}")));
    b.wait_for("#timeline");
    let details =
        f.rt.block_on(f.queue.job_details(wf))
            .expect("details")
            .expect("the workflow exists");
    let items = b.find_all("#timeline li");
    assert_eq!(
        items.len(),
        details.checkpoints.len(),
        "one entry per checkpoint"
    );
    let names: Vec<String> = items
        .iter()
        .filter_map(|i| b.attr(i, "data-name"))
        .collect();
    for expected in ["reserve", "charge_card", "spawn:notify", "join:notify"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    // The reservation call's stored value, and each entry's time.
    let timeline = text_of(&b, "#timeline");
    assert!(timeline.contains("\"reserved\": true"), "{timeline}");
    assert_eq!(
        b.find_all("#timeline li time").len(),
        items.len(),
        "every checkpoint has its time"
    );
    assert!(text_of(&b, "#result").contains("receipt-42"));
    // The last progress the handler reported.
    assert!(text_of(&b, "#progress").contains("\"step\": \"charged\""));
    assert!(
        !b.find_all("#attempts tr[data-attempt]").is_empty(),
        "the attempt history"
    );
    b.screenshot_full("workflow");

    // The children, linked from the tree; click through to the first.
    let children = b.find_all("#children a[data-child]");
    assert_eq!(children.len(), 2);
    assert_eq!(children.len(), details.children.len());
    let child = b.attr(&children[0], "data-child").expect("a child id");
    b.click(&children[0]);
    b.wait_until("the child's page is open", |b| {
        b.url().ends_with(&format!("/jobs/{child}"))
    });
    assert!(text_of(&b, "h1").contains("notify"));
    let parent = b.wait_for("#workflow a[data-parent]");
    assert_eq!(b.attr(&parent, "data-parent"), Some(wf.to_string()));
    assert!(text_of(&b, "#result").contains("notified customer"));
    b.screenshot("child");
    // And back up to the parent.
    b.click(&parent);
    b.wait_until("the workflow's page is open again", |b| {
        b.url().ends_with(&format!("/jobs/{wf}"))
    });
}

pub fn retry_makes_a_failed_job_pending(backend: Backend) {
    let (_lease, f, b) = setup(backend, "retry");
    let id = f.seeded.failed;
    b.goto(&f.url(&format!("/jobs/{id}")));
    b.wait_for("#last-error");
    assert!(text_of(&b, "#last-error").contains("card declined for 1299 cents"));
    b.screenshot("failed-job");
    assert_eq!(f.job(id).status, JobStatus::Failed);
    b.click(&b.wait_for("form[action$=\"/retry\"] button"));
    b.wait_for("#notice");
    assert_eq!(f.job(id).status, JobStatus::Pending, "retried in storage");
    assert_eq!(text_of(&b, "h1 [data-status]"), "pending");
    assert!(
        b.url().ends_with(&format!("/jobs/{id}?notice=retried")),
        "{}",
        b.url()
    );
    // A pending job offers cancel, not retry.
    assert!(b.find("form[action$=\"/retry\"]").is_none());
    assert!(b.find("form[action$=\"/cancel\"]").is_some());
    b.screenshot("retried");
}

pub fn cancel_and_delete_ask_first_then_act(backend: Backend) {
    let (_lease, f, b) = setup(backend, "cancel-delete");
    let id = f.seeded.pending;
    b.goto(&f.url(&format!("/jobs/{id}")));
    b.click(&b.wait_for("form[action$=\"/cancel\"] button"));
    // The embedded script asks first; nothing is sent until the person agrees.
    b.wait_until("the confirmation is shown", |b| b.alert_text().is_some());
    assert_eq!(
        f.job(id).status,
        JobStatus::Pending,
        "not cancelled before the answer"
    );
    b.accept_alert();
    b.wait_for("#notice");
    assert_eq!(f.job(id).status, JobStatus::Cancelled);
    assert_eq!(text_of(&b, "h1 [data-status]"), "cancelled");

    b.click(&b.wait_for("form[action$=\"/delete\"] button"));
    b.wait_until("the confirmation is shown", |b| b.alert_text().is_some());
    b.accept_alert();
    b.wait_until("the job list is shown", |b| {
        b.url().ends_with("/jobs?notice=deleted")
    });
    assert!(text_of(&b, "#notice").contains("deleted"));
    assert!(
        f.rt.block_on(f.queue.get_job(id)).expect("read").is_none(),
        "deleted from storage"
    );
    assert!(b.find(&format!("#jobs tr[data-job=\"{id}\"]")).is_none());
}

pub fn a_script_payload_stays_inert(backend: Backend) {
    let (_lease, f, b) = setup(backend, "script");
    let id = f.seeded.script;
    for path in [format!("/jobs/{id}"), "/jobs?task=render".to_string()] {
        b.goto(&f.url(&path));
        b.wait_for("main h1");
        assert_eq!(b.alert_text(), None, "no alert on {path}");
        assert_eq!(
            b.exec("return window.__xss === undefined;", vec![]),
            serde_json::json!(true),
            "no script ran on {path}"
        );
        assert_eq!(
            b.exec(
                "return document.querySelectorAll('main script, main img, main [onerror]').length;",
                vec![]
            ),
            serde_json::json!(0),
            "no element was injected on {path}"
        );
    }
    b.goto(&f.url(&format!("/jobs/{id}")));
    let payload = text_of(&b, "#payload");
    assert!(
        payload.contains(SCRIPT_NOTE),
        "the script shows as text: {payload}"
    );
    assert!(
        payload.contains("<img src=x onerror="),
        "{payload} holds {IMG_NOTE}"
    );
    assert!(
        text_of(&b, "#result").contains(SCRIPT_NOTE),
        "the result too"
    );
    b.screenshot("script-payload");
}

pub fn read_only_shows_no_action_and_refuses_posts(backend: Backend) {
    let (_lease, mut f, b) = setup(backend, "read-only");
    let addr = f.serve(DashboardOptions::new().read_only(true));
    let id = f.seeded.failed;
    for path in [
        "/".to_string(),
        format!("/jobs/{id}"),
        "/schedules".into(),
        "/jobs".into(),
    ] {
        b.goto(&Fixture::url_at(addr, &path));
        b.wait_for("#read-only");
        assert!(
            b.find_all("form[method=post]").is_empty(),
            "no action form on {path}"
        );
        assert!(
            b.find_all("button")
                .iter()
                .all(|btn| b.text(btn) == "Filter"),
            "no action button on {path}"
        );
    }
    b.goto(&Fixture::url_at(addr, &format!("/jobs/{id}")));
    b.wait_for("#fields");
    assert!(b.find("#actions").is_none());
    b.screenshot("job");

    // A well-formed POST with a matching token is still refused.
    let token = "00112233445566778899aabbccddeeff";
    for path in [
        format!("/jobs/{id}/retry"),
        "/queues/default/pause".into(),
        "/schedules/nightly-digest/pause".into(),
    ] {
        let r = post(addr, &path, Some(token), Some(token));
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains("read-only"), "{}", r.text());
    }
    assert_eq!(f.job(id).status, JobStatus::Failed, "nothing changed");
    assert!(f
        .rt
        .block_on(f.queue.paused_queues())
        .expect("paused")
        .iter()
        .all(|q| q != "default"));
    // The other dashboard over the same queue still has its actions.
    b.goto(&f.url(&format!("/jobs/{id}")));
    b.wait_for("form[action$=\"/retry\"]");
}

/// POSTs an action form to the dashboard at `addr`, with or without the cookie and the
/// form token.
fn post(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: Option<&str>,
    token: Option<&str>,
) -> http::Response {
    let cookie_header = cookie.map(|c| format!("durable_jobs_csrf={c}"));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = &cookie_header {
        headers.push(("Cookie", c));
    }
    let body = token.map(|t| format!("csrf_token={t}")).unwrap_or_default();
    http::request(
        addr,
        "POST",
        &format!("{MOUNT}{path}"),
        &headers,
        body.as_bytes(),
    )
    .expect("POST to the dashboard")
}

pub fn a_post_without_the_csrf_token_is_refused(backend: Backend) {
    let (_lease, f, b) = setup(backend, "csrf");
    let id = f.seeded.failed;
    // In the browser: the form loses its hidden token, then the button is clicked.
    b.goto(&f.url(&format!("/jobs/{id}")));
    b.wait_for("form[action$=\"/retry\"] input[name=csrf_token]");
    b.exec(
        "document.querySelectorAll('input[name=csrf_token]').forEach(function (e) { e.remove(); }); return null;",
        vec![],
    );
    b.click(&b.wait_for("form[action$=\"/retry\"] button"));
    b.wait_for("#error");
    assert!(
        text_of(&b, "#error").contains("CSRF token"),
        "{}",
        b.body_text()
    );
    assert!(text_of(&b, "h1").contains("403"));
    b.screenshot("refused");
    assert_eq!(f.job(id).status, JobStatus::Failed, "nothing changed");

    // Raw requests: every incomplete or mismatched pair is refused.
    let token = "00112233445566778899aabbccddeeff";
    let other = "ffeeddccbbaa99887766554433221100";
    let path = format!("/jobs/{id}/retry");
    for (cookie, form) in [
        (None, None),
        (Some(token), None),
        (None, Some(token)),
        (Some(token), Some(other)),
    ] {
        let r = post(f.addr, &path, cookie, form);
        assert_eq!(
            r.status,
            403,
            "cookie {cookie:?}, form {form:?}: {}",
            r.text()
        );
    }
    assert_eq!(f.job(id).status, JobStatus::Failed, "nothing changed");

    // The cookie the dashboard sets, and a POST that carries it like a form does.
    let page = http::request(f.addr, "GET", &format!("{MOUNT}/jobs/{id}"), &[], b"").expect("GET");
    let set_cookie = page
        .header("set-cookie")
        .expect("the CSRF cookie is set")
        .to_string();
    for part in ["HttpOnly", "SameSite=Strict", &format!("Path={MOUNT}")] {
        assert!(set_cookie.contains(part), "{set_cookie} has {part}");
    }
    let issued = set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_string())
        .expect("a cookie value");
    assert!(
        page.text().contains(&format!("value=\"{issued}\"")),
        "the form carries the cookie's token"
    );
    let r = post(f.addr, &path, Some(&issued), Some(&issued));
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("{MOUNT}/jobs/{id}?notice=retried").as_str())
    );
    assert_eq!(
        f.job(id).status,
        JobStatus::Pending,
        "the matching pair is accepted"
    );
}

pub fn links_stay_under_the_mount_path(backend: Backend) {
    let (_lease, f, b) = setup(backend, "links");
    let base = format!("http://{}{MOUNT}", f.addr);
    for path in [
        "/".to_string(),
        "/jobs".into(),
        format!("/jobs/{}", f.seeded.workflow),
        "/schedules".into(),
        "/no-such-page".into(),
    ] {
        b.goto(&f.url(&path));
        b.wait_for("header.top");
        let mut targets: Vec<String> = b
            .find_all("a[href]")
            .iter()
            .filter_map(|a| b.prop(a, "href"))
            .collect();
        targets.extend(
            b.find_all("form")
                .iter()
                .filter_map(|form| b.prop(form, "action")),
        );
        assert!(targets.len() > 3, "{path}: {targets:?}");
        for t in &targets {
            assert!(t.starts_with(&base), "{path}: {t} is outside {base}");
        }
        // The embedded stylesheet loaded from under the mount path.
        assert_eq!(
            b.exec(
                "return getComputedStyle(document.querySelector('header.top')).backgroundColor;",
                vec![]
            ),
            serde_json::json!("rgb(29, 35, 48)"),
            "{path}: the stylesheet applies"
        );
    }
    assert!(b.body_text().contains("There is no page at this address"));
}

pub fn queues_and_schedules_pause_and_resume(backend: Backend) {
    let (_lease, f, b) = setup(backend, "pause");
    let paused = |f: &Fixture, name: &str| -> bool {
        f.rt.block_on(f.queue.schedules())
            .expect("schedules")
            .iter()
            .any(|s| s.name == name && s.paused)
    };
    b.goto(&f.url("/schedules"));
    let row = "tr[data-schedule=\"nightly-digest\"]";
    b.wait_for(row);
    assert!(text_of(&b, row).contains("cron 0 3 * * *"));
    assert!(text_of(&b, row).contains("send_email"));
    b.screenshot("schedules");
    b.click(&b.wait_for(&format!("{row} form[action$=\"/pause\"] button")));
    b.wait_for("#notice");
    assert!(paused(&f, "nightly-digest"));
    assert!(!paused(&f, "inventory-sync"));
    b.click(&b.wait_for(&format!("{row} form[action$=\"/resume\"] button")));
    b.wait_until("the schedule is resumed", |b| {
        b.find(&format!("{row}[data-paused=\"false\"]")).is_some()
    });
    assert!(!paused(&f, "nightly-digest"));

    let queue_paused = |f: &Fixture, q: &str| -> bool {
        f.rt.block_on(f.queue.paused_queues())
            .expect("paused queues")
            .iter()
            .any(|p| p == q)
    };
    b.goto(&f.url("/"));
    b.click(&b.wait_for("tr[data-queue=\"media\"] form[action$=\"/resume\"] button"));
    b.wait_for("#notice");
    assert!(!queue_paused(&f, "media"));
    b.click(&b.wait_for("tr[data-queue=\"emails\"] form[action$=\"/pause\"] button"));
    b.wait_until("the queue shows as paused", |b| {
        b.find("tr[data-queue=\"emails\"] .badge.paused").is_some()
    });
    assert!(queue_paused(&f, "emails"));
}
