//! The process admin listener of `kappa server`: `/healthz`, `/readyz` (every role it runs is
//! ready) and `/metrics` (every role's metrics in one exposition).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kappa_api::ApiMetrics;
use kappa_router::Router;

use crate::Role;

/// Readiness of one role, flipped once it serves.
#[derive(Clone)]
pub(crate) struct Ready {
    pub(crate) role: Role,
    pub(crate) flag: Arc<AtomicBool>,
}

/// What the process admin listener reports.
#[derive(Clone, Default)]
pub(crate) struct Admin {
    pub(crate) ready: Vec<Ready>,
    pub(crate) api_metrics: Option<Arc<ApiMetrics>>,
    /// The shared registry (executor and trigger metrics) when no API role serves it.
    pub(crate) executor_metrics: Option<Arc<prometheus_client::registry::Registry>>,
    pub(crate) router: Option<Router>,
    /// Checked on `/metrics` when `--metrics-need-token` is set.
    pub(crate) metrics_token: Option<kappa_core::TokenCheck>,
}

pub(crate) fn admin_app(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(admin))
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let waiting: Vec<&str> = admin
        .ready
        .iter()
        .filter(|r| !r.flag.load(Ordering::Acquire))
        .map(|r| r.role.name())
        .collect();
    if waiting.is_empty() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(check) = &admin.metrics_token {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(refused) = check.verify(authorization) {
            let body = kappa_types::ErrorBody::new("unauthorized", refused.to_string()).to_bytes();
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
                ],
                body,
            )
                .into_response();
        }
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = &admin.api_metrics {
        parts.push(m.encode());
    }
    if let Some(registry) = &admin.executor_metrics {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, registry).is_ok() {
            parts.push(text);
        }
    }
    if let Some(router) = &admin.router {
        parts.push(router.metrics_text());
    }
    // Each part is a complete exposition ending in `# EOF`; the combination ends once.
    let mut body = String::new();
    for part in parts {
        for line in part.lines().filter(|l| *l != "# EOF") {
            body.push_str(line);
            body.push('\n');
        }
    }
    body.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}
