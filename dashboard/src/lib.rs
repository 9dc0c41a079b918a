//! A web dashboard for [durable-jobs](durable_jobs): an [`axum::Router`] that an
//! application mounts under any path, and that `durable-jobs dashboard` serves.
//!
//! ```no_run
//! # async fn example(queue: durable_jobs::Queue) -> Result<(), Box<dyn std::error::Error>> {
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     // Put your own authentication layer around it (see examples/axum_app.rs).
//!     .nest("/admin/jobs", durable_jobs_dashboard::router(queue));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Pages
//! Paths are relative to where the router is mounted; every link and form is built from
//! that mount path, so the dashboard works under any `nest` path (nest it without a
//! trailing slash).
//!
//! | path | shows |
//! | --- | --- |
//! | `/` | jobs per queue and status, jobs finished and failed in the last hour, workers alive and dead, paused queues; refreshes itself |
//! | `/jobs` | the job list, filtered by `status` (one or several, comma-separated), `queue`, `task`, `tag`, `parent`, paged by `after` (an id) and `limit` |
//! | `/jobs/{id}` | a job: fields, payload, result, error, the attempt history, the checkpoint timeline, its workflow tree (parent, children, bundle) |
//! | `/schedules` | the schedules with their next tick |
//!
//! # Actions
//! POST forms: `/jobs/{id}/retry`, `/jobs/{id}/retry-keep` (keeps checkpoints),
//! `/jobs/{id}/cancel`, `/jobs/{id}/delete`, `/queues/{name}/pause`,
//! `/queues/{name}/resume`, `/schedules/{name}/pause`, `/schedules/{name}/resume`. Each
//! answers with a redirect to the page it came from. In read-only mode
//! ([`DashboardOptions::read_only`]) the forms are not shown and every POST is refused
//! with 403.
//!
//! **CSRF**: a double-submit cookie. The first page a browser loads sets a random
//! 128-bit token in an `HttpOnly`, `SameSite=Strict` cookie scoped to the mount path;
//! every form carries the same token in a hidden field, and a POST whose field does not
//! equal its cookie is refused with 403. Another site can make a browser POST but cannot
//! read the cookie to copy it into the form.
//!
//! # Safety of what is shown
//! Every stored value (payloads, results, errors, names, tags) is HTML-escaped, so a
//! payload holding `<script>` shows as text. Pages send a content security policy that
//! allows only the dashboard's own stylesheet and script, both compiled into the binary
//! (no CDN: it works on closed networks).
//!
//! # Authentication
//! [`router()`] has none: put the application's own layer around it. [`serve`] (and
//! [`router_with`]) require HTTP basic auth when [`DashboardOptions::basic_auth`] is set.

mod action;
mod auth;
mod csrf;
mod error;
mod html;
mod options;
mod page;
mod router;
mod view;

pub use error::Error;
pub use options::{
    BasicAuth, DashboardOptions, DEFAULT_PAGE_SIZE, DEFAULT_REFRESH_INTERVAL, MAX_PAGE_SIZE,
};

use durable_jobs::Queue;
use std::future::Future;
use std::net::SocketAddr;

/// The dashboard over `queue` with the default options: actions allowed, no
/// authentication of its own. Mount it with `Router::nest` (or serve it at the root).
///
/// ```
/// # fn example(queue: durable_jobs::Queue) {
/// let app: axum::Router = axum::Router::new().nest("/admin/jobs", durable_jobs_dashboard::router(queue));
/// # }
/// ```
pub fn router(queue: Queue) -> axum::Router {
    router_with(queue, DashboardOptions::default())
}

/// The dashboard over `queue` with `options` (read-only mode, basic auth, refresh period,
/// page size).
///
/// ```
/// # fn example(queue: durable_jobs::Queue) {
/// use durable_jobs_dashboard::{router_with, DashboardOptions};
/// let app: axum::Router = axum::Router::new()
///     .nest("/jobs-ui", router_with(queue, DashboardOptions { read_only: true, ..Default::default() }));
/// # }
/// ```
pub fn router_with(queue: Queue, options: DashboardOptions) -> axum::Router {
    router::build(queue, options)
}

/// Serves the dashboard at the root of `addr` until Ctrl-C (SIGINT) or, on Unix, SIGTERM,
/// then stops gracefully. What `durable-jobs dashboard` runs.
///
/// # Errors
/// [`Error::Bind`] when `addr` cannot be bound; [`Error::Serve`] when the server fails.
pub async fn serve(queue: Queue, addr: SocketAddr, options: DashboardOptions) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    serve_until(listener, queue, options, shutdown_signal()).await
}

/// Serves the dashboard at the root on a listener you bound (port 0 for a free one)
/// until `shutdown` resolves, then stops gracefully.
///
/// # Errors
/// [`Error::Serve`] when the server fails.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    queue: Queue,
    options: DashboardOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    axum::serve(listener, router_with(queue, options))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM. If a handler cannot be installed, that signal
/// is not waited for (the other still is).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
