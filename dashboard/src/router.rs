//! The routes, the state they share and the embedded assets.

use crate::options::DashboardOptions;
use crate::page::Frame;
use crate::{action, auth, view};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use durable_jobs::Queue;
use std::sync::Arc;

/// The stylesheet, compiled into the binary (no CDN: dashboards run on closed networks).
const STYLE: &str = include_str!("../assets/style.css");

/// The script: in-place refresh of the overview and confirmation before deleting.
const SCRIPT: &str = include_str!("../assets/dashboard.js");

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) queue: Queue,
    pub(crate) options: DashboardOptions,
}

/// The dashboard's routes over `queue`.
pub(crate) fn build(queue: Queue, options: DashboardOptions) -> Router {
    let credentials = options.basic_auth.clone();
    let app = Arc::new(App { queue, options });
    let router = Router::new()
        .route("/", get(view::overview::show))
        .route("/jobs", get(view::job_list::show))
        .route("/jobs/{id}", get(view::job::show))
        .route("/jobs/{id}/{action}", post(action::job))
        .route("/queues/{name}/{action}", post(action::queue))
        .route("/schedules", get(view::schedules::show))
        .route("/schedules/{name}/{action}", post(action::schedule))
        .route("/assets/style.css", get(style))
        .route("/assets/dashboard.js", get(script))
        .fallback(not_found)
        .with_state(app);
    match credentials {
        Some(credentials) => auth::require(router, credentials),
        None => router,
    }
}

async fn not_found(frame: Frame) -> Response {
    frame.error(StatusCode::NOT_FOUND, "There is no page at this address.")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Links carry the crate version, so an upgrade fetches the new file.
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
