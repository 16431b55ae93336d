//! [`ApiState`]: what every handler shares, and the [`Invoker`] seam to the data plane.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use kappa_archive::ArchiveStore;
use kappa_core::{FunctionId, TokenCheck};
use kappa_logs::LogStore;
use kappa_store::Store;
use tokio_util::sync::CancellationToken;

use crate::metrics::ApiMetrics;

/// How often a watch stream sends a `Bookmark` line when nothing else happens.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);

/// Sends a test invocation (`/v1/functions/{name}/invoke`) to a function, normally through the
/// router. The API server does not know how functions run; whoever assembles the platform
/// (`kappa up`) plugs the router in here.
/// Waits until the data plane serves what a write changed: `kappa up` plugs the router in,
/// so a route answers as soon as the request that created it returns (read-your-writes).
#[async_trait]
pub trait RouteSync: Send + Sync + 'static {
    /// Waits, bounded, until every trigger and function write up to store resource version
    /// `version` is reflected in the routes.
    async fn wait_applied(&self, version: u64);
}

/// Whether this platform's backend can run an Environment's runtime. `kappa up` plugs the
/// local runtime registry in, so an image the local backend cannot start is refused when the
/// Environment is written, naming `spec.runtime.image`; without one any image is accepted (on
/// Kubernetes an image runs as it is).
pub trait RuntimeCheck: Send + Sync + 'static {
    /// `Err` with what is wrong and what is expected.
    fn check(&self, image: &str, command: Option<&str>) -> Result<(), String>;
}

#[async_trait]
pub trait Invoker: Send + Sync + 'static {
    /// Invokes `function` with `request`, whose URI is already rewritten to the function's own
    /// `/<path>?<query>`. The response is streamed back to the client unchanged.
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<Body>,
    ) -> http::Response<Body>;
}

/// The shared state of the API server. Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct ApiState {
    /// Desired state; the API server is its only writer.
    pub store: Arc<dyn Store>,
    /// Content-addressed archives (package code).
    pub archives: Arc<ArchiveStore>,
    /// Function instance logs.
    pub logs: Arc<LogStore>,
    /// Sends test invocations; `None` answers `503 unavailable`.
    pub invoker: Option<Arc<dyn Invoker>>,
    /// Lists the pool manager's instances (`.../instances`); `None` answers `503 unavailable`.
    pub instances: Option<Arc<dyn kappa_core::InstanceLister>>,
    /// The routers' request history (`/v1/stats`, the dashboard); `None` answers `503
    /// unavailable`.
    pub stats: Option<Arc<dyn kappa_core::StatsSource>>,
    /// Awaited after trigger and function writes; `None` returns at once.
    pub route_sync: Option<Arc<dyn RouteSync>>,
    /// Checks Environments' runtimes against the backend; `None` accepts any image.
    pub runtime_check: Option<Arc<dyn RuntimeCheck>>,
    /// The bearer token every route but `/healthz`, `/readyz` and (unless
    /// [`ApiState::metrics_need_token`]) `/metrics` requires; `None` disables authentication.
    pub token: Option<TokenCheck>,
    /// `/metrics` requires the token too (`--metrics-need-token`).
    pub metrics_need_token: bool,
    /// The public router's URL, reported by `GET /v1/info`.
    pub router_url: Option<String>,
    /// The server's Prometheus metrics.
    pub metrics: Arc<ApiMetrics>,
    /// How often an idle watch stream sends a bookmark.
    pub bookmark_interval: Duration,
    /// Serialises the API's check-then-write sequences (referential checks, then the store
    /// write), so two concurrent requests cannot both pass a check that only one of them may
    /// pass (two triggers on one route, a function created while its package is deleted).
    /// An async mutex because the critical section awaits the store; only writes take it and
    /// desired-state writes are rare, so the serialisation costs nothing that matters.
    pub(crate) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the server shuts down: ends the long-lived streams (watch, log follow)
    /// so a graceful shutdown does not wait on them forever.
    pub(crate) shutdown: CancellationToken,
    /// How often unused archives are collected, and how old an unused one must be; `None`
    /// keeps every archive.
    pub archive_gc: Option<ArchiveGc>,
    /// The HttpTrigger routes admission checks against (kept by [`crate::serve`]).
    pub(crate) route_keys: Arc<crate::route_keys::RouteKeys>,
}

/// The collection of archives no Package uses (see `collect_unused_archives`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveGc {
    /// Time between two collections.
    pub interval: Duration,
    /// How long an unused archive is kept after it was last uploaded.
    pub grace: Duration,
}

impl Default for ArchiveGc {
    /// Every 10 minutes, archives unused and not uploaded for an hour.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(600),
            grace: Duration::from_secs(3600),
        }
    }
}

impl ApiState {
    /// State with no token, no invoker and no router URL.
    pub fn new(store: Arc<dyn Store>, archives: Arc<ArchiveStore>, logs: Arc<LogStore>) -> Self {
        Self {
            store,
            archives,
            logs,
            invoker: None,
            instances: None,
            stats: None,
            route_sync: None,
            runtime_check: None,
            token: None,
            metrics_need_token: false,
            router_url: None,
            metrics: Arc::new(ApiMetrics::new()),
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            shutdown: CancellationToken::new(),
            archive_gc: None,
            route_keys: Arc::default(),
        }
    }

    /// Collects unused archives while [`crate::serve`] runs.
    pub fn with_archive_gc(mut self, gc: ArchiveGc) -> Self {
        self.archive_gc = Some(gc);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every route but health and metrics (an
    /// empty token disables authentication).
    pub fn with_token(mut self, token: impl AsRef<str>) -> Self {
        self.token = TokenCheck::optional(Some(token.as_ref()));
        self
    }

    /// Whether `/metrics` requires the token as well (it does not by default, so scrapers
    /// without it keep working).
    pub fn with_metrics_need_token(mut self, need: bool) -> Self {
        self.metrics_need_token = need;
        self
    }

    /// Sends test invocations through `invoker`.
    pub fn with_invoker(mut self, invoker: Arc<dyn Invoker>) -> Self {
        self.invoker = Some(invoker);
        self
    }

    /// Answers `GET /v1/functions/{name}/instances` and `/v1/environments/{name}/instances`
    /// from `lister` (the pool manager, in process or over the executor's API).
    pub fn with_instances(mut self, lister: Arc<dyn kappa_core::InstanceLister>) -> Self {
        self.instances = Some(lister);
        self
    }

    /// Answers `GET /v1/stats` and `/v1/functions/{name}/stats` from `source` (the router's
    /// history in process, or the executor's sum of every router replica's).
    pub fn with_stats(mut self, source: Arc<dyn kappa_core::StatsSource>) -> Self {
        self.stats = Some(source);
        self
    }

    /// Refuses Environments whose runtime `check` says the backend cannot run.
    pub fn with_runtime_check(mut self, check: Arc<dyn RuntimeCheck>) -> Self {
        self.runtime_check = Some(check);
        self
    }

    /// Waits for `sync` after trigger and function writes before answering.
    pub fn with_route_sync(mut self, sync: Arc<dyn RouteSync>) -> Self {
        self.route_sync = Some(sync);
        self
    }

    /// Waits until the routes reflect a write of `kind` at `version`, when that kind is routed.
    pub(crate) async fn settle(&self, kind: kappa_types::Kind, version: u64) {
        let routed = matches!(
            kind,
            kappa_types::Kind::Function | kappa_types::Kind::HttpTrigger
        );
        if let (true, Some(sync)) = (routed, &self.route_sync) {
            sync.wait_applied(version).await;
        }
    }

    /// Reports `url` as the public router's URL in `GET /v1/info`.
    pub fn with_router_url(mut self, url: impl Into<String>) -> Self {
        self.router_url = Some(url.into());
        self
    }

    /// Uses `metrics` (e.g. one whose registry holds more metrics) instead of a fresh set.
    pub fn with_metrics(mut self, metrics: Arc<ApiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Changes how often an idle watch stream sends a bookmark (15 s by default).
    pub fn with_bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Ends long-lived streams (watch, log follow) when `shutdown` is cancelled. [`crate::serve`]
    /// does this itself; call it when serving [`crate::app`] some other way.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }
}
