//! The admin listener: health, readiness, metrics, debug views, and the authenticated internal
//! invoke path (`kappa fn test`). Never served on the public listener.
//!
//! With a platform token configured, every `/internal/*` and `/debug/*` path (unknown ones
//! included, so they do not reveal what exists) requires it, and so does `/metrics` when
//! [`crate::RouterConfig::metrics_need_token`] is set; `/healthz` and `/readyz` stay open for
//! probes.

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
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/routes", get(debug_routes))
        .route("/debug/endpoints", get(debug_endpoints))
        .route(
            "/internal/v1/functions/{namespace}/{name}/invoke",
            any(internal_invoke),
        )
        .route(
            "/internal/v1/functions/{namespace}/{name}/invoke/{*path}",
            any(internal_invoke),
        )
        .fallback(not_found)
        // A layer (not a route layer) so unmatched paths under the protected prefixes are
        // refused the same way as matched ones.
        .layer(middleware::from_fn_with_state(
            router.clone(),
            require_token,
        ))
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
    let idle = router.inner.idle_counts();
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

/// Whether `path` needs the platform token.
fn protected(path: &str, metrics_need_token: bool) -> bool {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under("/internal") || under("/debug") || (metrics_need_token && path == "/metrics")
}

async fn require_token(State(router): State<Router>, request: Request, next: Next) -> Response {
    if let Some(check) = &router.inner.token
        && protected(request.uri().path(), router.inner.config.metrics_need_token)
    {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(refused) = check.verify(authorization) {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{refused} (the platform token)"),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn not_found(request: Request) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no admin path {}", request.uri().path()),
    )
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
    // `hello@3` (or its id `hello.v3`) invokes a kept version of `hello`.
    let name = kappa_types::function_ref_target(&name);
    router
        .invoke(FunctionId::new(namespace, name), request)
        .await
}

#[cfg(test)]
mod tests {
    use super::protected;

    #[test]
    fn protected_paths() {
        for path in [
            "/debug",
            "/debug/",
            "/debug/endpoints",
            "/debug/anything/else",
            "/internal/v1/functions/default/f/invoke",
        ] {
            assert!(protected(path, false), "{path}");
        }
        for path in ["/healthz", "/readyz", "/metrics", "/debugger", "/internals"] {
            assert!(!protected(path, false), "{path}");
        }
        assert!(protected("/metrics", true));
        assert!(!protected("/healthz", true));
    }
}
