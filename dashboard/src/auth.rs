//! HTTP basic authentication for [`crate::DashboardOptions::basic_auth`].

use crate::options::BasicAuth;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use std::sync::Arc;

/// `router` behind a check of every request's `Authorization: Basic` header.
pub(crate) fn require(router: Router, credentials: BasicAuth) -> Router {
    let credentials = Arc::new(credentials);
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let credentials = credentials.clone();
        async move {
            if authorized(request.headers(), &credentials) {
                next.run(request).await
            } else {
                challenge()
            }
        }
    }))
}

/// True when the request carries these credentials.
pub(crate) fn authorized(headers: &HeaderMap, credentials: &BasicAuth) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, encoded) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then_some(encoded.trim())
        })
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .is_some_and(|decoded| credentials.matches(&decoded))
}

/// 401 with the header that makes a browser ask for credentials.
fn challenge() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "401 Unauthorized: this dashboard needs a user name and password.\n",
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"durable-jobs\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn checks_the_decoded_pair() -> Result<(), crate::Error> {
        let creds = BasicAuth::new("admin", "pa:ss")?;
        let good = base64::engine::general_purpose::STANDARD.encode("admin:pa:ss");
        assert!(authorized(&with(&format!("Basic {good}")), &creds));
        assert!(authorized(&with(&format!("basic {good}")), &creds));
        let bad = base64::engine::general_purpose::STANDARD.encode("admin:pa:sS");
        assert!(!authorized(&with(&format!("Basic {bad}")), &creds));
        assert!(!authorized(&with("Basic !!!"), &creds));
        assert!(!authorized(&with(&format!("Bearer {good}")), &creds));
        assert!(!authorized(&HeaderMap::new(), &creds));
        Ok(())
    }
}
