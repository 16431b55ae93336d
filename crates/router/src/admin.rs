//! The admin listener: health, readiness, metrics, debug views, and the authenticated internal
//! invoke path (`kappa fn test`). Never served on the public listener.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use kappa_core::FunctionId;
use kappa_types::ErrorBody;
use serde_json::json;

use crate::Router;

/// The admin application.
pub(crate) fn app(router: Router) -> axum::Router {
    let internal = axum::Router::new()
        .route(
            "/internal/v1/functions/{namespace}/{name}/invoke",
            any(internal_invoke),
        )
        .route(
            "/internal/v1/functions/{namespace}/{name}/invoke/{*path}",
            any(internal_invoke),
        )
        .route_layer(middleware::from_fn_with_state(
            router.clone(),
            require_token,
        ));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/routes", get(debug_routes))
        .route("/debug/endpoints", get(debug_endpoints))
        .merge(internal)
        .with_state(router)
}

fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message).to_bytes();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(router): State<Router>) -> Response {
    if *router.inner.ready.borrow() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "route table not loaded yet",
        )
            .into_response()
    }
}

async fn metrics(State(router): State<Router>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        )],
        router.metrics_text(),
    )
        .into_response()
}

async fn debug_routes(State(router): State<Router>) -> Response {
    let table = router.inner.table.load();
    let mut functions: Vec<_> = table
        .functions()
        .map(|f| {
            json!({
                "function": f.id.to_string(),
                "generation": f.generation,
                "timeoutSeconds": f.timeout.as_secs(),
            })
        })
        .collect();
    functions.sort_by(|a, b| a["function"].as_str().cmp(&b["function"].as_str()));
    Json(json!({ "routes": table.routes(), "functions": functions })).into_response()
}

async fn debug_endpoints(State(router): State<Router>) -> Response {
    let index = &router.inner.index;
    let mut snapshot = index.snapshot();
    snapshot.sort_by(|a, b| a.0.cmp(&b.0));
    let idle: std::collections::HashMap<_, _> =
        router.inner.upstreams.idle_counts().into_iter().collect();
    let functions: Vec<_> = snapshot
        .into_iter()
        .filter_map(|(id, endpoints)| {
            let waiting = index.get(&id).map_or(0, |f| f.waiting());
            if endpoints.is_empty() && waiting == 0 {
                return None;
            }
            let endpoints: Vec<_> = endpoints
                .iter()
                .map(|e| {
                    json!({
                        "instance": e.instance_id,
                        "addr": e.addr.to_string(),
                        "generation": e.generation,
                        "capacity": e.capacity,
                        "inFlight": e.in_flight(),
                        "served": e.served(),
                        "draining": e.is_draining(),
                        "idleMs": e.idle_for().as_millis() as u64,
                        "idleConnections": idle.get(&e.addr).copied().unwrap_or(0),
                        "exit": e.exit_reason(),
                    })
                })
                .collect();
            Some(json!({ "function": id.to_string(), "waiting": waiting, "endpoints": endpoints }))
        })
        .collect();
    Json(json!({ "functions": functions })).into_response()
}

/// Compares without an early exit, so the time taken does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(router): State<Router>, request: Request, next: Next) -> Response {
    if let Some(token) = &router.inner.config.internal_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the internal API needs the header Authorization: Bearer <internal token>",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

#[derive(serde::Deserialize)]
struct InvokePath {
    namespace: String,
    name: String,
}

async fn internal_invoke(
    State(router): State<Router>,
    Path(InvokePath { namespace, name }): Path<InvokePath>,
    mut request: Request,
) -> Response<Body> {
    // The function receives the raw (still percent-encoded) rest of the path and the query.
    let prefix = format!("/internal/v1/functions/{namespace}/{name}/invoke");
    let raw = request.uri().path();
    let rest = raw.strip_prefix(&prefix).unwrap_or("");
    let rest = if rest.is_empty() { "/" } else { rest };
    let target = match request.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    match target.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request path: {error}"),
            );
        }
    }
    router
        .invoke(FunctionId::new(namespace, name), request)
        .await
}
