//! The cross-cutting request handling that [`crate::app`] layers around every route: bearer-token
//! authentication, metrics, the JSON error shape for every error response, tracing spans.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use tracing::Span;

use crate::error::ApiError;
use crate::invoke::Passthrough;
use crate::state::ApiState;

/// Paths served without a token: probes have none, and the dashboard's page and assets
/// (`/ui`, `/ui/...`; they hold no data, the page asks for the token and sends it on every
/// API call it makes).
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/"];

/// Requires the configured bearer token ([`kappa_core::TokenCheck`]) on every path but
/// [`OPEN_PATHS`] and, unless [`ApiState::metrics_need_token`], `/metrics` (scrapers often have
/// no token). A build token ([`kappa_core::build_token`], a builder pod's credential) is
/// accepted only for what a build needs: `GET`/`HEAD /v1/archives/<its source sha256>` and
/// `POST /v1/archives`. A refused request never reaches a handler, so it changes nothing.
pub(crate) async fn auth(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(check) = state.token.as_ref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path)
        || crate::ui::is_ui_path(path)
        || (path == "/metrics" && !state.metrics_need_token)
    {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes);
    match check.verify(authorization) {
        Ok(()) => next.run(request).await,
        Err(refused) => match check.verify_build(authorization) {
            Ok(grant) if build_may(&grant, request.method(), path) => next.run(request).await,
            Ok(_) => ApiError::Unauthorized(
                "a build token may only read its source archive and upload archives".into(),
            )
            .into_response(),
            Err(_) => ApiError::Unauthorized(refused.to_string()).into_response(),
        },
    }
}

/// Whether a build token with `grant` may make this request: read its source archive, upload.
fn build_may(grant: &kappa_core::BuildGrant, method: &Method, path: &str) -> bool {
    let reads_source = path
        .strip_prefix("/v1/archives/")
        .is_some_and(|sha| sha == grant.source_sha256);
    ((method == Method::GET || method == Method::HEAD) && reads_source)
        || (method == Method::POST && path == "/v1/archives")
}

/// The method as a metrics label: one of the standard methods, or `OTHER` (so a client cannot
/// create series at will).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, label)| *label)
        .unwrap_or("OTHER")
}

/// The route template a request matched (`/v1/functions/{name}`), or `unmatched`.
fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string())
}

/// Counts every request in `kappa_api_requests_total` and times it to its response headers.
pub(crate) async fn metrics(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = method_label(request.method());
    let route = route_label(&request);
    let response = next.run(request).await;
    state.metrics.observe(
        method,
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Largest plain-text error body read back to become a JSON message.
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// Puts every error response that is not JSON yet (axum's own rejections, the empty 405 of a
/// known path with another method) into the `{"error": {...}}` shape. Responses marked
/// [`Passthrough`] (a function's own answer to a test invocation) are left alone.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Passthrough>().is_some()
        || is_json(response.headers())
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else {
        match status {
            StatusCode::NOT_FOUND => format!("no route for {method} {path}"),
            StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed on {path}"),
            other => other.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    };
    let mut mapped = ApiError::from_status(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            mapped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    mapped
}

/// The span of one request: method, matched route, request id; status and latency are
/// recorded when the response is ready.
pub(crate) fn make_span(request: &http::Request<Body>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "api_request",
        method = %request.method(),
        route,
        request_id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

/// Records status and latency on the request's span and logs the answer.
pub(crate) fn on_response<B>(response: &http::Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    tracing::info!(status, latency_ms, "request answered");
}

/// The answer for a path no route matches.
pub(crate) async fn fallback(method: Method, uri: http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"FOO").unwrap()), "OTHER");
    }
}
