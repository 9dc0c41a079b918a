//! The actions: POST forms that retry, cancel or delete a job and pause or resume a queue
//! or a schedule. Each is refused (403) in read-only mode and without the browser's CSRF
//! token; each answers with a redirect (303) to the page it came from and a notice.

use crate::csrf;
use crate::page::Frame;
use crate::router::App;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use durable_jobs::{Error, JobId};
use serde::Deserialize;
use std::sync::Arc;

/// An action form's fields.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    csrf_token: Option<String>,
}

/// The refusal of a request when actions are off or the CSRF token does not match.
fn refusal(
    app: &App,
    frame: &Frame,
    headers: &HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Option<Response> {
    if app.options.read_only {
        return Some(frame.error(
            StatusCode::FORBIDDEN,
            "This dashboard is read-only: actions are turned off.",
        ));
    }
    let submitted = form.ok().and_then(|Form(f)| f.csrf_token);
    if !csrf::verify(headers, submitted.as_deref()) {
        return Some(frame.error(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or does not match this browser's cookie. \
             Reload the page and try again.",
        ));
    }
    None
}

/// 303 See Other to `path` under the mount prefix, with a notice code.
fn back(frame: &Frame, path: &str, notice: &str) -> Response {
    let location = format!("{}?notice={notice}", frame.href(path));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn failed(frame: &Frame, e: &Error) -> Response {
    match e {
        Error::JobNotFound(id) => {
            frame.error(StatusCode::NOT_FOUND, &format!("No job has id {id}."))
        }
        Error::InvalidQueueName(_) | Error::InvalidOption { .. } => {
            frame.error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Error::InvalidState { .. } | Error::JobFinished { .. } => {
            frame.error(StatusCode::CONFLICT, &e.to_string())
        }
        _ => frame.storage_error(e),
    }
}

/// POST `/jobs/{id}/{retry | retry-keep | cancel | delete}`.
pub(crate) async fn job(
    State(app): State<Arc<App>>,
    frame: Frame,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    if let Some(refused) = refusal(&app, &frame, &headers, form) {
        return Err(refused);
    }
    let id: JobId = id
        .parse()
        .map_err(|_| frame.error(StatusCode::NOT_FOUND, "A job id is a whole number."))?;
    let page = format!("/jobs/{id}");
    let queue = &app.queue;
    let err = |e: Error| failed(&frame, &e);
    match action.as_str() {
        "retry" | "retry-keep" => {
            let keep = action == "retry-keep";
            let n = queue.retry_jobs(&[id], keep).await.map_err(err)?;
            let notice = match (n, keep) {
                (0, _) => "not-retried",
                (_, true) => "retried-kept",
                (_, false) => "retried",
            };
            Ok(back(&frame, &page, notice))
        }
        "cancel" => {
            let cancelled = queue.cancel(id).await.map_err(err)?;
            Ok(back(
                &frame,
                &page,
                if cancelled {
                    "cancelled"
                } else {
                    "not-cancelled"
                },
            ))
        }
        "delete" => {
            if queue.delete_job(id).await.map_err(err)? {
                Ok(back(&frame, "/jobs", "deleted"))
            } else {
                Err(frame.error(StatusCode::NOT_FOUND, &format!("No job has id {id}.")))
            }
        }
        _ => Err(frame.error(StatusCode::NOT_FOUND, "Unknown job action.")),
    }
}

/// POST `/queues/{name}/{pause | resume}`.
pub(crate) async fn queue(
    State(app): State<Arc<App>>,
    frame: Frame,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    if let Some(refused) = refusal(&app, &frame, &headers, form) {
        return Err(refused);
    }
    let err = |e: Error| failed(&frame, &e);
    match action.as_str() {
        "pause" => {
            app.queue.pause_queue(&name).await.map_err(err)?;
            Ok(back(&frame, "/", "queue-paused"))
        }
        "resume" => {
            app.queue.resume_queue(&name).await.map_err(err)?;
            Ok(back(&frame, "/", "queue-resumed"))
        }
        _ => Err(frame.error(StatusCode::NOT_FOUND, "Unknown queue action.")),
    }
}

/// POST `/schedules/{name}/{pause | resume}`.
pub(crate) async fn schedule(
    State(app): State<Arc<App>>,
    frame: Frame,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    if let Some(refused) = refusal(&app, &frame, &headers, form) {
        return Err(refused);
    }
    let err = |e: Error| failed(&frame, &e);
    let found = match action.as_str() {
        "pause" => app.queue.pause_schedule(&name).await.map_err(err)?,
        "resume" => app.queue.resume_schedule(&name).await.map_err(err)?,
        _ => return Err(frame.error(StatusCode::NOT_FOUND, "Unknown schedule action.")),
    };
    let notice = match (found, action.as_str()) {
        (false, _) => "schedule-missing",
        (true, "pause") => "schedule-paused",
        (true, _) => "schedule-resumed",
    };
    Ok(back(&frame, "/schedules", notice))
}
