//! The Kappa API server: the control plane's HTTP/JSON API and the only writer of desired
//! state.
//!
//! It owns:
//! - CRUD of Environments, Packages, Functions and HttpTriggers under `/v1/{plural}`, with
//!   field-level validation and referential checks (a function's environment and package exist,
//!   two triggers never claim one route, an environment in use is not deleted);
//! - applying several writes as one change (`/v1/batch`, `batch.rs`: every object at its old
//!   or its new version when the request returns);
//! - moving literal package archives into the archive store, so the store never holds blobs;
//! - keeping secret values in the store: every response and watch event carrying a Secret is
//!   redacted (`redact.rs`), and no error message quotes a value;
//! - archive upload/download (`/v1/archives`), the watch stream (`/v1/watch`), function logs
//!   (`/v1/functions/{name}/logs`) and test invocations (`/v1/functions/{name}/invoke`);
//! - bearer-token authentication, the JSON error shape, request ids, tracing and metrics.
//!
//! It deliberately does not run functions, build packages or reconcile anything: it only
//! records desired state. Test invocations go through an [`Invoker`] (the router) that whoever
//! assembles the platform plugs in. The contract is specified in `docs/api.md`.

mod admit;
mod archives;
mod batch;
mod error;
mod extract;
mod instances;
mod invocations;
mod invoke;
mod logs;
mod metrics;
mod middleware;
mod ops;
mod redact;
mod resources;
mod state;
mod versions;
mod watch;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use archives::collect_unused_archives;
pub use error::ApiError;
pub use metrics::ApiMetrics;
pub use state::{ApiState, ArchiveGc, DEFAULT_BOOKMARK_INTERVAL, Invoker, RouteSync, RuntimeCheck};

/// Largest resource body (JSON or YAML) the API reads: 4 MiB. Archives have their own limit,
/// the archive store's.
pub const RESOURCE_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The API as an axum router, ready to serve or to call with `oneshot` in tests.
pub fn app(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/info", get(ops::info))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/batch", axum::routing::post(batch::batch))
        .route(
            "/v1/archives",
            get(archives::list)
                .post(archives::upload)
                // Uploads are streamed to disk and bounded by the archive store's own limit.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/archives/{sha256}",
            get(archives::download)
                .head(archives::head)
                .delete(archives::delete),
        )
        .route("/v1/functions/{name}/logs", get(logs::logs))
        .route("/v1/functions/{name}/versions", get(versions::list))
        .route(
            "/v1/functions/{name}/rollback",
            axum::routing::post(versions::rollback),
        )
        .route(
            "/v1/functions/{name}/invocations",
            get(invocations::of_function),
        )
        .route("/v1/invocations/{id}", get(invocations::get_one))
        .route(
            "/v1/functions/{name}/instances",
            get(instances::of_function),
        )
        .route(
            "/v1/environments/{name}/instances",
            get(instances::of_environment),
        )
        .route(
            "/v1/functions/{name}/invoke",
            any(invoke::invoke).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/functions/{name}/invoke/{*path}",
            any(invoke::invoke).layer(DefaultBodyLimit::disable()),
        );
    let routes = resources::routes(routes).fallback(middleware::fallback);

    // Every cross-cutting concern, outermost first.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(middleware::make_span)
                .on_response(middleware::on_response),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::metrics,
        ))
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ))
        .layer(DefaultBodyLimit::max(RESOURCE_BODY_LIMIT));

    routes.layer(layers).with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, ends the
/// long-lived streams (watch, log follow) and returns once in-flight requests are answered.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let state = state.with_shutdown(shutdown.clone());
    let gc = state.archive_gc.map(|gc| {
        tokio::spawn(archives::collect_unused_archives_every(
            state.clone(),
            gc.interval,
            gc.grace,
            shutdown.clone(),
        ))
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "API server listening");
    }
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
    });
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Some(gc) = gc {
        gc.abort();
    }
    served
}
