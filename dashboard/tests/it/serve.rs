//! `serve` and `serve_until`, as `durable-jobs dashboard` uses them: the dashboard at the
//! root of its own server, with basic auth from the options. Plain HTTP, no browser.

use crate::http;
use base64::Engine;
use durable_jobs::Queue;
use durable_jobs_dashboard::{BasicAuth, DashboardOptions, Error};
use std::sync::Arc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn serve_until_requires_the_basic_auth_credentials_and_links_from_the_root() {
    let rt = runtime();
    let queue = rt.block_on(async {
        let storage = durable_jobs_sqlite::SqliteStorage::open_in_memory()
            .await
            .expect("an in-memory SQLite storage");
        Queue::new(Arc::new(storage))
    });
    let credentials = BasicAuth::new("ops", "s3cret:pass").expect("valid credentials");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("the bound address");
        let server = tokio::spawn(durable_jobs_dashboard::serve_until(
            listener,
            queue,
            DashboardOptions::new().basic_auth(credentials),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, server)
    });

    let get = |path: &str, auth: Option<&str>| {
        let header = auth.map(|a| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        http::request(addr, "GET", path, &headers, b"").expect("GET the dashboard")
    };
    let refused = get("/", None);
    assert_eq!(refused.status, 401);
    assert!(refused
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    assert_eq!(get("/", Some("ops:wrong")).status, 401);
    assert_eq!(get("/assets/style.css", None).status, 401, "assets too");
    let page = get("/", Some("ops:s3cret:pass"));
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("No jobs yet."), "{html}");
    // Served at the root, links start at `/`.
    assert!(html.contains("href=\"/jobs\""), "{html}");
    assert!(html.contains("href=\"/assets/style.css?v="), "{html}");
    let css = get("/assets/style.css", Some("ops:s3cret:pass"));
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let missing = get("/jobs/12345", Some("ops:s3cret:pass"));
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("No job has id 12345."));
    let bad = get("/jobs?status=done", Some("ops:s3cret:pass"));
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("unknown status `done`"));

    let _ = stop.send(());
    rt.block_on(server)
        .expect("the server task")
        .expect("a clean shutdown");
}

#[test]
fn serve_names_an_address_it_cannot_bind() {
    let rt = runtime();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = taken.local_addr().expect("the bound address");
    let result = rt.block_on(async {
        let storage = durable_jobs_sqlite::SqliteStorage::open_in_memory()
            .await
            .expect("an in-memory SQLite storage");
        durable_jobs_dashboard::serve(
            Queue::new(Arc::new(storage)),
            addr,
            DashboardOptions::default(),
        )
        .await
    });
    match result {
        Err(e @ Error::Bind { .. }) => {
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}
