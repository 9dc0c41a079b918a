//! The frame around every page: where the dashboard is mounted (links are built from it),
//! the browser's CSRF token, the layout, action forms and error pages.

use crate::csrf::{self, Token};
use crate::html::{esc, w};
use crate::router::App;
use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;

/// The content security policy of every page: nothing but the dashboard's own assets
/// runs or loads, so even markup that escaped escaping could not run a script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Jobs,
    Schedules,
    None,
}

/// What every page handler gets: the mount prefix, the CSRF token and the mode.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The path the router is mounted at, without a trailing slash ("" at the root).
    pub(crate) prefix: String,
    pub(crate) csrf: Token,
    pub(crate) read_only: bool,
    /// The `notice` query parameter an action's redirect sets.
    notice: Option<String>,
}

/// The path the router is mounted at, from the request's original path and the path the
/// router sees (what nesting left of it). `/admin/jobs/jobs/7` seen as `/jobs/7` gives
/// `/admin/jobs`; `/admin/jobs` seen as `/` gives `/admin/jobs`.
pub(crate) fn mount_prefix(original: &str, inner: &str) -> String {
    let prefix = if inner == "/" || inner.is_empty() {
        original
    } else {
        original.strip_suffix(inner).unwrap_or("")
    };
    let prefix = prefix.trim_end_matches('/');
    // Never `//host`: a link starting so would leave the site.
    if prefix.starts_with("//") {
        format!("/{}", prefix.trim_start_matches('/'))
    } else {
        prefix.to_string()
    }
}

impl FromRequestParts<Arc<App>> for Frame {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |o| o.0.path());
        let notice = parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == "notice")
                .map(|(_, v)| v.to_string())
        });
        Ok(Frame {
            prefix: mount_prefix(original, inner),
            csrf: Token::for_request(&parts.headers),
            read_only: app.options.read_only,
            notice,
        })
    }
}

impl Frame {
    /// An absolute link to `path` (which starts with `/`) under the mount prefix.
    pub(crate) fn href(&self, path: &str) -> String {
        if path == "/" {
            if self.prefix.is_empty() {
                "/".into()
            } else {
                self.prefix.clone()
            }
        } else {
            format!("{}{path}", self.prefix)
        }
    }

    /// A POST form with one button, carrying the CSRF token; nothing in read-only mode.
    /// `confirm` asks the person first (through the embedded script).
    pub(crate) fn action(
        &self,
        path: &str,
        label: &str,
        class: &str,
        confirm: Option<&str>,
    ) -> String {
        if self.read_only {
            return String::new();
        }
        let mut out = String::new();
        w!(
            out,
            "<form method=\"post\" action=\"{}\" class=\"inline\"",
            esc(&self.href(path))
        );
        if let Some(c) = confirm {
            w!(out, " data-confirm=\"{}\"", esc(c));
        }
        w!(
            out,
            "><input type=\"hidden\" name=\"{}\" value=\"{}\"><button type=\"submit\" class=\"btn {}\">{}</button></form>",
            csrf::FIELD,
            esc(&self.csrf.value),
            esc(class),
            esc(label)
        );
        out
    }

    /// A full page with the layout around `body`.
    pub(crate) fn page(&self, title: &str, nav: Nav, body: &str) -> Response {
        self.render(StatusCode::OK, title, nav, body, "")
    }

    /// A page whose `live` part refreshes itself every `secs` seconds (0: never).
    pub(crate) fn live_page(&self, title: &str, nav: Nav, body: &str, secs: u64) -> Response {
        let head = if secs > 0 {
            format!("<noscript><meta http-equiv=\"refresh\" content=\"{secs}\"></noscript>")
        } else {
            String::new()
        };
        self.render(StatusCode::OK, title, nav, body, &head)
    }

    /// An error page with `status` and a message saying what went wrong.
    pub(crate) fn error(&self, status: StatusCode, message: &str) -> Response {
        let title = status.canonical_reason().unwrap_or("Error");
        let mut body = String::new();
        w!(
            body,
            "<h1>{} {}</h1><p class=\"error-message\" id=\"error\">{}</p><p><a href=\"{}\">Back to the overview</a></p>",
            status.as_u16(),
            esc(title),
            esc(message),
            esc(&self.href("/"))
        );
        self.render(status, title, Nav::None, &body, "")
    }

    /// The error page for a failed storage call.
    pub(crate) fn storage_error(&self, e: &durable_jobs::Error) -> Response {
        self.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the storage call failed: {e}"),
        )
    }

    fn render(
        &self,
        status: StatusCode,
        title: &str,
        nav: Nav,
        body: &str,
        head: &str,
    ) -> Response {
        let version = env!("CARGO_PKG_VERSION");
        let mut out = String::with_capacity(body.len() + 2048);
        w!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · durable-jobs</title>\
             <link rel=\"stylesheet\" href=\"{}?v={version}\">\
             <script src=\"{}?v={version}\" defer></script>{head}</head><body>",
            esc(title),
            esc(&self.href("/assets/style.css")),
            esc(&self.href("/assets/dashboard.js")),
        );
        w!(
            out,
            "<header class=\"top\"><a class=\"brand\" href=\"{}\">durable-jobs</a><nav>",
            esc(&self.href("/"))
        );
        for (entry, label, path) in [
            (Nav::Overview, "Overview", "/"),
            (Nav::Jobs, "Jobs", "/jobs"),
            (Nav::Schedules, "Schedules", "/schedules"),
        ] {
            let class = if entry == nav {
                " class=\"active\""
            } else {
                ""
            };
            w!(
                out,
                "<a href=\"{}\"{class}>{label}</a>",
                esc(&self.href(path))
            );
        }
        out.push_str("</nav>");
        if self.read_only {
            out.push_str("<span class=\"badge read-only\" id=\"read-only\">read-only</span>");
        }
        out.push_str("</header><main>");
        if let Some(text) = self.notice.as_deref().and_then(notice_text) {
            w!(out, "<p class=\"notice\" id=\"notice\">{}</p>", esc(text));
        }
        out.push_str(body);
        w!(
            out,
            "</main><footer>durable-jobs-dashboard {version}</footer></body></html>\n"
        );
        let mut response = (status, out).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        if self.csrf.is_new {
            if let Ok(v) = HeaderValue::from_str(&self.csrf.set_cookie(&self.prefix)) {
                headers.insert(header::SET_COOKIE, v);
            }
        }
        response
    }
}

/// The text for a notice code an action's redirect carries (fixed texts only: nothing
/// from the request is shown).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "retried" => "The job was requeued from scratch.",
        "retried-kept" => "The job was requeued; it resumes after its finished steps.",
        "not-retried" => "Nothing to retry: only failed or cancelled jobs can be retried.",
        "cancelled" => "The job was cancelled.",
        "not-cancelled" => "The job had already finished; nothing was cancelled.",
        "deleted" => "The job was deleted.",
        "not-deleted" => "The job was not deleted.",
        "queue-paused" => "The queue is paused: workers claim nothing from it until resumed.",
        "queue-resumed" => "The queue was resumed.",
        "schedule-paused" => "The schedule is paused.",
        "schedule-resumed" => "The schedule was resumed.",
        "schedule-missing" => "No schedule has that name.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::mount_prefix;

    #[test]
    fn the_mount_prefix_comes_from_the_original_path() {
        assert_eq!(mount_prefix("/admin/jobs/jobs/7", "/jobs/7"), "/admin/jobs");
        assert_eq!(mount_prefix("/admin/jobs", "/"), "/admin/jobs");
        assert_eq!(mount_prefix("/admin/jobs/", "/"), "/admin/jobs");
        assert_eq!(mount_prefix("/jobs/7", "/jobs/7"), "");
        assert_eq!(mount_prefix("/", "/"), "");
        assert_eq!(
            mount_prefix("/t/acme/ops/schedules", "/schedules"),
            "/t/acme/ops"
        );
    }
}
