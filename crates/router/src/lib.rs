//! The Kappa router: the platform's public HTTP front door.
//!
//! It owns:
//! - the **route table** (`table`): HttpTriggers and Functions from the store, rebuilt off the
//!   request path into an immutable value swapped atomically (`arc-swap`), one radix tree per
//!   host so lookup cost does not grow with the number of routes;
//! - **warm admission**: a request takes a [`kappa_core::Permit`] from the
//!   [`kappa_core::EndpointIndex`] and goes straight to the instance; only a miss calls
//!   [`kappa_core::Provisioner::provision`], and a function at capacity gets a bounded wait queue
//!   (429/503 with `Retry-After` when it overflows or times out);
//! - the **proxy**: a lean hyper 1 server on the public listener, its own per-endpoint keep-alive
//!   upstream connection pool, streaming bodies both ways, the function timeout, the one safe
//!   retry (connection refused before any byte was sent) and structured JSON errors that carry
//!   the invocation id and the real cause;
//! - the **admin listener** (`admin`): health, readiness, metrics, and, behind the platform
//!   token, the debug views and the internal invoke path used by `kappa fn test`;
//! - in cluster mode, its **own copy of the endpoint index** (`remote`): fed by the executor's
//!   endpoint feed through a [`ReadinessGate`] (`readiness`), which also keeps out endpoints
//!   whose pods a pod watcher reports not ready (the watcher itself lives in `kappa-kube`).
//!
//! It deliberately does not start, specialize or scale instances (the pool manager does, behind
//! `Provisioner`), does not write to the store, and never exposes functions on the public
//! listener except through their triggers.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod asyncinv;
mod body;
mod error;
mod errorhead;
mod front;
mod lean;
mod metrics;
mod proxy;
pub mod readiness;
pub mod remote;
mod server;
mod table;
mod upgrade;
mod upstream;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use kappa_core::{EndpointIndex, FunctionId, Provisioner};
use kappa_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::RouterError;
pub use readiness::{FeedAdded, ReadinessGate};
pub use remote::{EndpointFeeder, RemoteConfig, RemoteError, RemoteProvisioner};

use crate::metrics::Metrics;
use crate::table::RouteTable;
use crate::upstream::Upstreams;

/// The router's settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Per-function wait queue length when every instance is busy and the function may not grow.
    pub queue_limit: usize,
    /// Request body limit in bytes, enforced from `Content-Length` and while streaming.
    pub max_body_bytes: u64,
    /// `Retry-After` (seconds) on 429 and 503 answers.
    pub retry_after_secs: u32,
    /// The platform token, required on `/internal/*` and `/debug/*` of the admin listener
    /// (and on `/metrics` with [`RouterConfig::metrics_need_token`]); open when `None`.
    pub internal_token: Option<String>,
    /// `/metrics` of the admin listener requires the token too (off by default, so scrapers
    /// without it keep working).
    pub metrics_need_token: bool,
    /// An upgraded (WebSocket) connection with no byte either way for this long is closed.
    pub upgrade_idle_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown was requested (then their
    /// connections are closed); `kappa server --shutdown-grace` sets it.
    pub shutdown_grace: Duration,
    /// Threads serving the public listener, each a current-thread runtime with its own
    /// `SO_REUSEPORT` listener and its own upstream connections (thread-per-core, design note
    /// 010); `0` (the default: thread-per-core was not measurably faster, see
    /// docs/benchmarks.md) serves it on the caller's runtime. `kappa up`/`kappa server
    /// --router-threads` set it.
    pub threads: usize,
    /// Serve the common public request on the lean server path (`src/front.rs`, design note
    /// 014) rather than hyper's server; on by default. Off, every connection is hyper's (the
    /// tests compare the two).
    pub lean_server: bool,
}

/// The default of [`RouterConfig::shutdown_grace`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle keep-alive connections the router keeps per instance.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            queue_limit: 100,
            max_body_bytes: 64 * 1024 * 1024,
            retry_after_secs: 1,
            internal_token: None,
            metrics_need_token: false,
            upgrade_idle_timeout: Duration::from_secs(600),
            shutdown_grace: SHUTDOWN_GRACE,
            threads: 0,
            lean_server: true,
        }
    }
}

/// The HTTP router. Cheap to clone: every clone shares one state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The router's shared state.
pub(crate) struct Inner {
    pub(crate) config: RouterConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) index: Arc<EndpointIndex>,
    pub(crate) provisioner: Arc<dyn Provisioner>,
    /// The current route table. `ArcSwap`: requests load it without locking, the watcher
    /// replaces it whole after a rebuild.
    pub(crate) table: ArcSwap<RouteTable>,
    /// `true` once the first route table was built from the store. A `watch` channel so
    /// `wait_ready` can await the transition without polling.
    pub(crate) ready: watch::Sender<bool>,
    /// The highest store resource version the current route table reflects (every trigger and
    /// function write at or below it is routed). A `watch` channel so writers can await it.
    pub(crate) applied: watch::Sender<u64>,
    /// Upstream connections of requests served on the caller's runtime ([`Router::invoke`],
    /// and the public listener with [`RouterConfig::threads`] `0`).
    pub(crate) upstreams: Arc<Upstreams>,
    /// Every router thread's own upstream connections (for the sweeper and `/debug/endpoints`).
    pub(crate) thread_upstreams: std::sync::Mutex<Vec<Arc<Upstreams>>>,
    /// The runtime [`Router::serve`] runs on: cold starts and store writes run there, so the
    /// pool manager's and the store's tasks never live on a router thread's runtime.
    pub(crate) main: std::sync::OnceLock<tokio::runtime::Handle>,
    pub(crate) metrics: Metrics,
    /// Precomputed `Retry-After` value.
    pub(crate) retry_after: http::HeaderValue,
    /// The check of [`RouterConfig::internal_token`].
    pub(crate) token: Option<kappa_core::TokenCheck>,
    /// Every function's last hour of requests, for the dashboard (`Router::stats`).
    pub(crate) stats: Arc<kappa_core::StatsRegistry>,
}

impl Router {
    /// A router over `store`'s triggers and functions, admitting on `index` and asking
    /// `provisioner` for capacity on a miss. Nothing runs until [`Router::serve`].
    pub fn new(
        config: RouterConfig,
        store: Arc<dyn Store>,
        index: Arc<EndpointIndex>,
        provisioner: Arc<dyn Provisioner>,
    ) -> Self {
        let metrics = Metrics::new();
        let retry_after = http::HeaderValue::from(config.retry_after_secs);
        let upstreams = Arc::new(Upstreams::new(MAX_IDLE_PER_ENDPOINT));
        let (ready, _) = watch::channel(false);
        let (applied, _) = watch::channel(0);
        let token = kappa_core::TokenCheck::optional(config.internal_token.as_deref());
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                index,
                provisioner,
                table: ArcSwap::from_pointee(RouteTable::empty()),
                ready,
                applied,
                upstreams,
                thread_upstreams: std::sync::Mutex::new(Vec::new()),
                main: std::sync::OnceLock::new(),
                metrics,
                retry_after,
                token,
                stats: Arc::new(kappa_core::StatsRegistry::new()),
            }),
        }
    }

    /// Runs the route-table watcher, the public listener and the admin listener until
    /// `shutdown` is cancelled; then stops accepting, lets in-flight requests finish within
    /// [`RouterConfig::shutdown_grace`] and returns. The public listener is served by
    /// [`RouterConfig::threads`] threads of their own (each with a clone of `public`'s address
    /// bound with `SO_REUSEPORT`), or on this runtime with `0`.
    pub async fn serve(
        &self,
        public: tokio::net::TcpListener,
        admin: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), RouterError> {
        server::serve(Arc::clone(&self.inner), public, admin, shutdown).await
    }

    /// Completes once the route table has been loaded from the store at least once.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // `wait_for` only fails when the sender is dropped, which cannot happen while `self`
        // holds it.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Waits (at most `timeout`) until the route table reflects every trigger and function
    /// write up to store resource version `version`; returns whether it does. The API server
    /// calls it after such writes so that a route is served as soon as its creation returns.
    pub async fn wait_applied(&self, version: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= version)).await,
            Ok(Ok(_))
        )
    }

    /// Invokes `function` directly, without a trigger (`kappa fn test`, trigger workers): the
    /// same admission, headers and errors as a routed request. The request URI's path and query
    /// are what the function receives.
    pub async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        proxy::invoke(&self.inner, function, request)
            .await
            .map(axum::body::Body::new)
    }

    /// The per-function request history this router records (for the API's `/v1/stats` and
    /// the dashboard, and in cluster mode the executor's sum of every replica's).
    pub fn stats(&self) -> Arc<kappa_core::StatsRegistry> {
        Arc::clone(&self.inner.stats)
    }

    /// Requests and failures this router answered per function and kept version (what the
    /// canary controller measures; also sent with usage reports in cluster mode).
    pub fn outcomes(&self) -> Arc<kappa_core::Outcomes> {
        Arc::clone(&self.inner.metrics.outcomes)
    }

    /// The router's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// The admin listener's application (health, readiness, metrics, debug, internal invoke),
    /// for callers that serve it themselves or test it with `oneshot`.
    pub fn admin_app(&self) -> axum::Router {
        admin::app(self.clone())
    }
}

impl Inner {
    /// Runs `task` on the runtime [`Router::serve`] runs on (or this one, before it runs):
    /// work whose tasks outlive a request (a cold start, a store write) is kept off the router
    /// threads' runtimes. Fails only when the task panicked or the runtime is shutting down.
    pub(crate) async fn on_main<F>(&self, task: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.main.get() {
            Some(main) => main.spawn(task).await,
            None => tokio::spawn(task).await,
        }
    }

    /// Closes idle upstream connections past their time, on every router thread's pools.
    pub(crate) fn sweep_upstreams(&self) {
        self.upstreams.sweep();
        for pools in self.thread_pools() {
            pools.sweep();
        }
    }

    /// Idle upstream connections per instance address, summed over the router threads.
    pub(crate) fn idle_counts(&self) -> std::collections::HashMap<kappa_core::InstanceAddr, usize> {
        let mut counts = std::collections::HashMap::new();
        for pools in std::iter::once(Arc::clone(&self.upstreams)).chain(self.thread_pools()) {
            for (addr, idle) in pools.idle_counts() {
                *counts.entry(addr).or_insert(0) += idle;
            }
        }
        counts
    }

    fn thread_pools(&self) -> Vec<Arc<Upstreams>> {
        self.thread_upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
