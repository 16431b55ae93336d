//! Health, readiness, metrics and server information.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use serde_json::json;

use crate::error::ApiError;
use crate::state::ApiState;

/// How long `/readyz` waits for the store before calling it unavailable.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers.
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.current_version()).await {
        Ok(Ok(_)) => Ok("ok"),
        Ok(Err(e)) => Err(ApiError::Unavailable(format!(
            "the store is not ready: {e}"
        ))),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the store did not answer within {} s",
            READY_TIMEOUT.as_secs()
        ))),
    }
}

/// `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /v1/info`: the server's version and the public router's URL.
pub(crate) async fn info(State(state): State<ApiState>) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "routerUrl": state.router_url,
    }))
    .into_response()
}
