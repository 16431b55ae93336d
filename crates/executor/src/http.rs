//! The pool manager's HTTP API, for routers in other processes (`kappa server --role executor`).
//!
//! - `POST /v1/provision` `{namespace, name, generation}` runs [`Provisioner::provision`] and
//!   answers `{"result":"added"|"at_capacity"}`, or the standard JSON error body
//!   `{"error":{"code","message"}}` with a `provisionError` member that carries the
//!   [`ProvisionError`] variant, so the router reports the same cause it would in-process.
//! - `GET /v1/endpoints` is the current endpoint list; `GET /v1/endpoints?watch=true` streams it
//!   as NDJSON: one `added` event (plus `draining` when it is) per current endpoint, then
//!   `synced`, then `added` / `draining` / `removed` as the index changes, and a `heartbeat`
//!   every [`HEARTBEAT_INTERVAL`] when nothing happens. A subscriber that falls more than
//!   [`FEED_BUFFER`] events behind is disconnected and resynchronises by reconnecting.
//! - `POST /v1/usage` `{replica, instances:[{instanceId, inFlight, served}]}`: each router
//!   replica admits on its own copy of the endpoints, so it reports what it has in flight. The
//!   executor holds that many slots of its own endpoint (capped at its capacity) until the next
//!   report, which keeps idle reaping and draining (both read the executor's in-flight counts)
//!   correct. A replica that stops reporting for [`REPLICA_TTL`] is forgotten.
//!
//! - `POST /v1/stats` `{replica, snapshot}` and `GET /v1/stats`: the routers' request
//!   history, summed over replicas for the API server's dashboard (`stats.rs`).
//!
//! Every route but `/healthz` requires `Authorization: Bearer <token>` when a token is set.
//!
//! The feed is computed by diffing the index (every [`FEED_INTERVAL`], and at once after a
//! provision call), because the pool manager writes the index directly and has no hook of its
//! own; the diff is O(endpoints) and bounded by the instance limit.
//!
//! This module deliberately does not decide anything about scaling: it exposes the pool
//! manager as it is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kappa_core::executor_api::{
    ENDPOINTS_PATH, INSTANCES_PATH, PROVISION_PATH, STATS_PATH, StatsReport, USAGE_PATH,
};
pub use kappa_core::executor_api::{
    EndpointList, FeedEvent, InstanceList, InstanceUsage, ProvisionErrorBody, ProvisionErrorWire,
    ProvisionRequest, ProvisionResponse, UsageReport,
};
use kappa_core::{
    Endpoint, EndpointIndex, FunctionId, InstanceLister, ProvisionError, Provisioner, TokenCheck,
};
use kappa_types::ErrorBody;
use serde::Deserialize;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often the index is diffed when nothing nudges the feed.
pub const FEED_INTERVAL: Duration = Duration::from_millis(100);
/// Events a watcher may fall behind before it is disconnected (it then reconnects).
pub const FEED_BUFFER: usize = 4096;
/// An idle watch stream sends a `heartbeat` line this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A router replica that has not reported usage for this long is forgotten (its slots freed).
pub const REPLICA_TTL: Duration = Duration::from_secs(10);
/// Most instances one usage report may list.
pub const MAX_USAGE_INSTANCES: usize = 16_384;

/// The status and stable code a provisioning error is answered with.
fn status_of(e: &ProvisionError) -> (StatusCode, &'static str) {
    match e {
        ProvisionError::FunctionNotFound(_) => (StatusCode::NOT_FOUND, "function_not_found"),
        ProvisionError::EnvironmentNotFound(_) | ProvisionError::Package { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "function_misconfigured")
        }
        ProvisionError::Specialize { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "specialize_failed")
        }
        ProvisionError::Start(_) => (StatusCode::SERVICE_UNAVAILABLE, "instance_start_failed"),
        ProvisionError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "specialize_timeout"),
        ProvisionError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

/// The event as one NDJSON line.
fn to_line(event: &FeedEvent) -> Bytes {
    Bytes::from(event.to_line())
}

struct Known {
    function: FunctionId,
    endpoint: Arc<Endpoint>,
    draining: bool,
}

/// The endpoint feed: the last seen state of the index and the broadcast of its changes.
struct Feed {
    index: Arc<EndpointIndex>,
    /// Pre-serialised lines. A broadcast channel: every watcher gets every event, and a slow one
    /// is cut off (`Lagged`) instead of slowing the others down.
    tx: broadcast::Sender<Bytes>,
    /// What the watchers have been told. A std mutex: held only for the synchronous diff, and
    /// held while sending so a new subscriber gets a consistent snapshot plus later changes.
    known: Mutex<HashMap<String, Known>>,
    /// Wakes the diff loop early.
    nudge: Notify,
}

impl Feed {
    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compares the index with what was announced and broadcasts the difference.
    fn diff(&self) {
        let snapshot = self.index.snapshot();
        let mut known = self.known();
        let send = |e: FeedEvent| {
            // No receivers is fine: there is nobody to tell.
            let _ = self.tx.send(to_line(&e));
        };
        let mut seen: HashSet<String> = HashSet::new();
        for (function, endpoints) in &snapshot {
            for e in endpoints {
                seen.insert(e.instance_id.clone());
                match known.get_mut(&e.instance_id) {
                    Some(k) if Arc::ptr_eq(&k.endpoint, e) => {
                        if !k.draining && e.is_draining() {
                            k.draining = true;
                            send(FeedEvent::draining(function, e));
                        }
                    }
                    previous => {
                        if let Some(old) = previous {
                            // Same id, new endpoint: replace it.
                            send(FeedEvent::removed(&old.function, &old.endpoint));
                        }
                        send(FeedEvent::added(function, e));
                        let draining = e.is_draining();
                        if draining {
                            send(FeedEvent::draining(function, e));
                        }
                        known.insert(
                            e.instance_id.clone(),
                            Known {
                                function: function.clone(),
                                endpoint: Arc::clone(e),
                                draining,
                            },
                        );
                    }
                }
            }
        }
        known.retain(|id, k| {
            if seen.contains(id) {
                return true;
            }
            send(FeedEvent::removed(&k.function, &k.endpoint));
            false
        });
    }

    /// The current endpoints as events, and a receiver of every later change.
    fn subscribe(&self) -> (VecDeque<Bytes>, broadcast::Receiver<Bytes>) {
        let known = self.known();
        let rx = self.tx.subscribe();
        let mut initial = VecDeque::new();
        for k in known.values() {
            initial.push_back(to_line(&FeedEvent::added(&k.function, &k.endpoint)));
            if k.draining {
                initial.push_back(to_line(&FeedEvent::draining(&k.function, &k.endpoint)));
            }
        }
        initial.push_back(to_line(&FeedEvent::Synced));
        (initial, rx)
    }

    fn list(&self) -> Vec<FeedEvent> {
        let known = self.known();
        let mut out: Vec<FeedEvent> = known
            .values()
            .map(|k| FeedEvent::added(&k.function, &k.endpoint))
            .collect();
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out
    }
}

/// Slots one replica holds on the executor's endpoints, mirroring its in-flight requests.
struct Replica {
    seen: Instant,
    held: HashMap<String, Vec<kappa_core::Permit>>,
    /// The replica's latest request outcomes per function (cumulative).
    outcomes: HashMap<FunctionId, (u64, u64)>,
}

/// The pool manager's HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct ExecutorApi {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    provisioner: Arc<dyn Provisioner>,
    /// Answers `GET /v1/instances` (unset: 404, this executor lists nothing).
    lister: OnceLock<Arc<dyn InstanceLister>>,
    index: Arc<EndpointIndex>,
    feed: Feed,
    /// Per router replica, the slots it holds. A std mutex: only synchronous bookkeeping.
    usage: Mutex<HashMap<String, Replica>>,
    /// The bearer token every route but `/healthz` requires (`None`: no authentication).
    token: Option<TokenCheck>,
    /// Each router replica's last request history (`/v1/stats`).
    stats: Arc<crate::stats::ReplicaStats>,
    /// Cancelled when [`ExecutorApi::run`] ends: watch streams end with it.
    streams: CancellationToken,
}

impl std::fmt::Debug for ExecutorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorApi")
            .field("auth", &self.inner.token.is_some())
            .finish_non_exhaustive()
    }
}

impl ExecutorApi {
    /// The API of `provisioner` (the pool manager) whose endpoints are in `index`. With a
    /// `token`, every route but `/healthz` requires it as a bearer token.
    pub fn new(
        provisioner: Arc<dyn Provisioner>,
        index: Arc<EndpointIndex>,
        token: Option<String>,
    ) -> Self {
        let (tx, _) = broadcast::channel(FEED_BUFFER);
        Self {
            inner: Arc::new(ApiInner {
                provisioner,
                lister: OnceLock::new(),
                index: Arc::clone(&index),
                feed: Feed {
                    index,
                    tx,
                    known: Mutex::new(HashMap::new()),
                    nudge: Notify::new(),
                },
                usage: Mutex::new(HashMap::new()),
                token: TokenCheck::optional(token.as_deref()),
                stats: Arc::new(crate::stats::ReplicaStats::new()),
                streams: CancellationToken::new(),
            }),
        }
    }

    /// The API with `GET /v1/instances` answered from `lister` (the pool manager; the first
    /// one given stays).
    pub fn with_instances(self, lister: Arc<dyn InstanceLister>) -> Self {
        let _ = self.inner.lister.set(lister);
        self
    }

    /// The axum application (for `oneshot` tests or callers that serve it themselves; they
    /// must also run [`ExecutorApi::run`]).
    pub fn app(&self) -> axum::Router {
        let authed = axum::Router::new()
            .route(PROVISION_PATH, post(provision))
            .route(ENDPOINTS_PATH, get(endpoints))
            .route(INSTANCES_PATH, get(instances))
            .route(USAGE_PATH, post(usage))
            .route(
                STATS_PATH,
                get(stats_sum)
                    .post(stats_report)
                    .layer(axum::extract::DefaultBodyLimit::max(
                        crate::stats::MAX_STATS_BODY,
                    )),
            )
            .route_layer(middleware::from_fn_with_state(self.clone(), require_token));
        axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .merge(authed)
            .with_state(self.clone())
    }

    /// Keeps the feed and the usage bookkeeping current until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let nudged = self.inner.feed.nudge.notified();
            self.inner.feed.diff();
            self.expire_replicas();
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.inner.streams.cancel();
                    return;
                }
                () = nudged => {}
                () = tokio::time::sleep(FEED_INTERVAL) => {}
            }
        }
    }

    /// Serves the API on `listener` (and runs [`ExecutorApi::run`]) until `shutdown`; watch
    /// streams end when it is cancelled.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "executor API listening");
        }
        let runner = {
            let this = self.clone();
            let token = shutdown.clone();
            tokio::spawn(async move { this.run(token).await })
        };
        let result = axum::serve(listener, self.app())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        runner.abort();
        result
    }

    /// The routers' request history this API collects (for an API server in this process).
    pub fn stats(&self) -> Arc<crate::stats::ReplicaStats> {
        Arc::clone(&self.inner.stats)
    }

    /// The request outcomes of `function` summed over every router replica reporting now.
    pub fn outcome(&self, function: &FunctionId) -> (u64, u64) {
        self.usage()
            .values()
            .filter_map(|r| r.outcomes.get(function))
            .fold((0, 0), |(r, f), (r2, f2)| (r + r2, f + f2))
    }

    /// Router replicas currently reporting usage.
    pub fn replicas(&self) -> usize {
        self.usage().len()
    }

    fn usage(&self) -> MutexGuard<'_, HashMap<String, Replica>> {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn expire_replicas(&self) {
        let now = Instant::now();
        let mut usage = self.usage();
        usage.retain(|name, r| {
            let keep = now.saturating_duration_since(r.seen) < REPLICA_TTL;
            if !keep {
                tracing::info!(replica = %name, "router replica stopped reporting; releasing its slots");
            }
            keep
        });
    }

    fn apply_usage(&self, report: UsageReport) {
        let mut endpoints: HashMap<String, (FunctionId, Arc<Endpoint>)> = HashMap::new();
        for (function, list) in self.inner.index.snapshot() {
            for e in list.iter() {
                endpoints.insert(e.instance_id.clone(), (function.clone(), Arc::clone(e)));
            }
        }
        let mut usage = self.usage();
        let replica = usage.entry(report.replica).or_insert_with(|| Replica {
            seen: Instant::now(),
            held: HashMap::new(),
            outcomes: HashMap::new(),
        });
        replica.seen = Instant::now();
        for o in report.functions {
            replica.outcomes.insert(
                FunctionId::new(o.namespace, o.function),
                (o.requests, o.failures),
            );
        }
        let mut next: HashMap<String, Vec<kappa_core::Permit>> = HashMap::new();
        for instance in report.instances {
            let mut permits = replica
                .held
                .remove(&instance.instance_id)
                .unwrap_or_default();
            let want = instance.in_flight as usize;
            permits.truncate(want);
            if (permits.len() < want || instance.served > 0)
                && let Some((function, endpoint)) = endpoints.get(&instance.instance_id)
            {
                // Slots on exactly this endpoint: a private one-endpoint index shares the
                // endpoint (and so its counters) with the real one.
                let single = EndpointIndex::new();
                single.insert(function, Arc::clone(endpoint));
                if let Some(only) = single.get(function) {
                    if permits.is_empty() && instance.served > 0 {
                        // Activity since the last report: take and release a slot, which
                        // records the endpoint as just used (idle reaping reads that).
                        drop(only.try_admit(endpoint.generation));
                    }
                    while permits.len() < want {
                        match only.try_admit(endpoint.generation) {
                            Some(p) => permits.push(p),
                            None => break, // full (other replicas) or draining
                        }
                    }
                }
            }
            if !permits.is_empty() {
                next.insert(instance.instance_id, permits);
            }
        }
        // Instances the replica no longer reports release their slots here.
        replica.held = next;
    }
}

fn json_error(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

fn plain_error(status: StatusCode, code: &str, message: String, field: Option<&str>) -> Response {
    let mut body = ErrorBody::new(code, message);
    if let Some(field) = field {
        body = body.with_field(field);
    }
    json_error(
        status,
        &serde_json::to_value(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn require_token(State(api): State<ExecutorApi>, request: Request, next: Next) -> Response {
    if let Some(check) = &api.inner.token {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(refused) = check.verify(authorization) {
            let mut response = plain_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                refused.to_string(),
                None,
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// `400 invalid` naming `field`, which must not be empty.
fn empty_field(field: &str) -> Response {
    plain_error(
        StatusCode::BAD_REQUEST,
        "invalid",
        format!("{field} must not be empty"),
        Some(field),
    )
}

/// `400 invalid` for a JSON body that does not parse as `what`.
fn invalid_body(what: &str, e: &JsonRejection) -> Response {
    plain_error(
        StatusCode::BAD_REQUEST,
        "invalid",
        format!("the {what} is not valid: {}", e.body_text()),
        None,
    )
}

async fn provision(
    State(api): State<ExecutorApi>,
    headers: axum::http::HeaderMap,
    body: Result<Json<ProvisionRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => {
            return invalid_body("provision request", &e);
        }
    };
    if req.namespace.is_empty() {
        return empty_field("namespace");
    }
    if req.name.is_empty() {
        return empty_field("name");
    }
    let function = FunctionId::new(req.namespace, req.name);
    let outcome = api
        .inner
        .provisioner
        .provision(&function, req.generation)
        .instrument(kappa_telemetry::continue_trace(
            &headers,
            "POST /v1/provision",
        ))
        .await;
    // Announce new endpoints before answering, so the caller's feed has them as soon as it can.
    api.inner.feed.diff();
    api.inner.feed.nudge.notify_one();
    match outcome {
        Ok(p) => Json(ProvisionResponse::new(p)).into_response(),
        Err(e) => {
            let (status, code) = status_of(&e);
            tracing::debug!(%function, error = %e, "provision failed");
            let body = ProvisionErrorBody {
                error: Some(ErrorBody::new(code, format!("function {function}: {e}")).error),
                provision_error: Some(ProvisionErrorWire::from(&e)),
            };
            json_error(
                status,
                &serde_json::to_value(&body).unwrap_or(serde_json::Value::Null),
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct EndpointsQuery {
    #[serde(default)]
    watch: bool,
}

/// `GET /v1/instances`: `{"items": [InstanceInfo...]}`.
async fn instances(State(api): State<ExecutorApi>) -> Response {
    let Some(lister) = api.inner.lister.get() else {
        return plain_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this executor does not list its instances".into(),
            None,
        );
    };
    match lister.instances().await {
        Ok(items) => Json(InstanceList { items }).into_response(),
        Err(message) => plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            None,
        ),
    }
}

async fn endpoints(
    State(api): State<ExecutorApi>,
    Query(query): Query<EndpointsQuery>,
) -> Response {
    if !query.watch {
        return Json(EndpointList {
            items: api.inner.feed.list(),
        })
        .into_response();
    }
    let shutdown = api.inner.streams.clone();
    let (initial, rx) = api.inner.feed.subscribe();
    struct Watch {
        initial: VecDeque<Bytes>,
        rx: broadcast::Receiver<Bytes>,
        shutdown: CancellationToken,
    }
    let stream = futures::stream::unfold(
        Watch {
            initial,
            rx,
            shutdown,
        },
        |mut w| async move {
            if let Some(line) = w.initial.pop_front() {
                return Some((Ok::<_, std::io::Error>(line), w));
            }
            let next = tokio::select! {
                () = w.shutdown.cancelled() => return None,
                r = tokio::time::timeout(HEARTBEAT_INTERVAL, w.rx.recv()) => r,
            };
            match next {
                Ok(Ok(line)) => Some((Ok(line), w)),
                Err(_) => Some((Ok(to_line(&FeedEvent::Heartbeat)), w)),
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::warn!(
                        missed,
                        "an endpoint watcher fell behind; closing its stream"
                    );
                    None
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => None,
            }
        },
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn usage(
    State(api): State<ExecutorApi>,
    body: Result<Json<UsageReport>, JsonRejection>,
) -> Response {
    let Json(report) = match body {
        Ok(body) => body,
        Err(e) => {
            return invalid_body("usage report", &e);
        }
    };
    if report.replica.is_empty() {
        return empty_field("replica");
    }
    if report.instances.len() > MAX_USAGE_INSTANCES {
        return plain_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "a usage report may list at most {MAX_USAGE_INSTANCES} instances, this one lists {}",
                report.instances.len()
            ),
            Some("instances"),
        );
    }
    api.apply_usage(report);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1/stats`: the sum of the router replicas' request histories.
async fn stats_sum(State(api): State<ExecutorApi>) -> Response {
    Json(api.inner.stats.sum()).into_response()
}

/// `POST /v1/stats`: one router replica's request history.
async fn stats_report(
    State(api): State<ExecutorApi>,
    body: Result<Json<StatsReport>, JsonRejection>,
) -> Response {
    let Json(report) = match body {
        Ok(body) => body,
        Err(e) => {
            return invalid_body("stats report", &e);
        }
    };
    if report.replica.is_empty() {
        return empty_field("replica");
    }
    api.inner.stats.apply(report);
    StatusCode::NO_CONTENT.into_response()
}

impl kappa_core::OutcomeSource for ExecutorApi {
    fn outcome(&self, function: &FunctionId) -> (u64, u64) {
        ExecutorApi::outcome(self, function)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use async_trait::async_trait;
    use axum::http::Request as HttpRequest;
    use kappa_core::Provision;
    use tower::ServiceExt as _;

    struct Fixed(Result<Provision, ProvisionError>);

    #[async_trait]
    impl Provisioner for Fixed {
        async fn provision(&self, _: &FunctionId, _: i64) -> Result<Provision, ProvisionError> {
            self.0.clone()
        }
    }

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    async fn call(app: axum::Router, req: HttpRequest<Body>) -> (StatusCode, serde_json::Value) {
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    #[tokio::test]
    async fn stats_of_router_replicas_are_summed() {
        let index = Arc::new(EndpointIndex::new());
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            index,
            Some("t".into()),
        );
        let hello = FunctionId::new("default", "hello");
        let report = |replica: &str, status: u16| {
            let stats = kappa_core::StatsRegistry::new();
            stats.record(&hello, status, Duration::from_millis(5), b"");
            serde_json::json!({"replica": replica, "snapshot": stats.snapshot()})
        };
        let post = |body: serde_json::Value, token: &str| {
            HttpRequest::post("/v1/stats")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let (status, _) = call(api.app(), post(report("r1", 200), "wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        for (replica, code) in [("r1", 200), ("r2", 500), ("r1", 200)] {
            let (status, body) = call(api.app(), post(report(replica, code), "t")).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
        let (status, body) = call(api.app(), post(report("", 200), "t")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["field"], "replica");

        let get = HttpRequest::get("/v1/stats")
            .header("authorization", "Bearer t")
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(api.app(), get).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let sum: kappa_core::StatsSnapshot = serde_json::from_value(body).unwrap();
        // r1's second report replaced its first: one request each from r1 and r2.
        let summary = sum.function(&hello).unwrap().summary(sum.minute, 60);
        assert_eq!((summary.requests, summary.errors), (2, 1));
    }

    fn provision_req(token: Option<&str>) -> HttpRequest<Body> {
        let mut b = HttpRequest::post("/v1/provision").header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(
            r#"{"namespace":"default","name":"hello","generation":1}"#,
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn provision_answers_and_errors_round_trip() {
        let index = Arc::new(EndpointIndex::new());
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::AtCapacity))),
            Arc::clone(&index),
            Some("t".into()),
        );
        for token in [None, Some("wrong"), Some("tt"), Some("")] {
            let (status, body) = call(api.app(), provision_req(token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let (status, body) = call(api.app(), provision_req(Some("t"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["result"], "at_capacity");

        let error = ProvisionError::Specialize {
            message: "no module named x".into(),
            detail: Some("Traceback".into()),
        };
        let api = ExecutorApi::new(Arc::new(Fixed(Err(error.clone()))), index, None);
        let (status, body) = call(api.app(), provision_req(None)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "specialize_failed");
        let wire: ProvisionErrorWire =
            serde_json::from_value(body["provisionError"].clone()).unwrap();
        assert_eq!(ProvisionError::from(wire), error);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            Arc::new(EndpointIndex::new()),
            None,
        );
        let req = HttpRequest::post("/v1/provision")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"namespace":"","name":"x","generation":1}"#))
            .unwrap();
        let (status, body) = call(api.app(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["field"], "namespace");
        let req = HttpRequest::post("/v1/provision")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"namespace":"a"}"#))
            .unwrap();
        let (status, body) = call(api.app(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing field"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn feed_reports_added_draining_removed() {
        let index = Arc::new(EndpointIndex::new());
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            Arc::clone(&index),
            None,
        );
        let f = FunctionId::new("default", "hello");
        let e = Arc::new(Endpoint::new("i1", addr(), 3, 2));
        index.insert(&f, Arc::clone(&e));
        api.inner.feed.diff();
        let (initial, mut rx) = api.inner.feed.subscribe();
        let lines: Vec<FeedEvent> = initial
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                FeedEvent::Added {
                    namespace: "default".into(),
                    function: "hello".into(),
                    instance_id: "i1".into(),
                    address: "127.0.0.1:9".into(),
                    generation: 3,
                    capacity: 2,
                },
                FeedEvent::Synced,
            ]
        );
        e.mark_draining();
        api.inner.feed.diff();
        let next: FeedEvent = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert!(matches!(next, FeedEvent::Draining { .. }), "{next:?}");
        e.set_exit("exited with code 1");
        index.remove(&f, "i1");
        api.inner.feed.diff();
        let next: FeedEvent = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(
            next,
            FeedEvent::Removed {
                namespace: "default".into(),
                function: "hello".into(),
                instance_id: "i1".into(),
                exit: Some("exited with code 1".into()),
            }
        );
    }

    #[tokio::test]
    async fn outcomes_are_summed_over_replicas() {
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            Arc::new(EndpointIndex::new()),
            None,
        );
        let v2 = FunctionId::new("default", "hello.v2");
        let report = |replica: &str, requests: u64, failures: u64| UsageReport {
            replica: replica.into(),
            instances: Vec::new(),
            functions: vec![kappa_core::FunctionOutcome {
                namespace: "default".into(),
                function: "hello.v2".into(),
                requests,
                failures,
            }],
        };
        api.apply_usage(report("a", 10, 2));
        api.apply_usage(report("b", 5, 5));
        assert_eq!(api.outcome(&v2), (15, 7));
        // Counters are cumulative: a later report replaces the replica's earlier one.
        api.apply_usage(report("a", 12, 2));
        assert_eq!(api.outcome(&v2), (17, 7));
        assert_eq!(api.outcome(&FunctionId::new("default", "hello")), (0, 0));
    }

    #[tokio::test]
    async fn usage_reports_hold_slots_per_replica() {
        let index = Arc::new(EndpointIndex::new());
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            Arc::clone(&index),
            None,
        );
        let f = FunctionId::new("default", "hello");
        let e = Arc::new(Endpoint::new("i1", addr(), 1, 3));
        index.insert(&f, Arc::clone(&e));
        let report = |replica: &str, in_flight: u32| UsageReport {
            replica: replica.into(),
            functions: Vec::new(),
            instances: vec![InstanceUsage {
                instance_id: "i1".into(),
                in_flight,
                served: 0,
            }],
        };
        api.apply_usage(report("a", 2));
        assert_eq!(e.in_flight(), 2);
        api.apply_usage(report("b", 2));
        assert_eq!(e.in_flight(), 3, "capped at the capacity");
        api.apply_usage(report("a", 0));
        assert_eq!(e.in_flight(), 1, "b still holds the one slot it got");
        api.apply_usage(UsageReport {
            replica: "b".into(),
            functions: Vec::new(),
            instances: vec![],
        });
        assert_eq!(e.in_flight(), 0);
        assert_eq!(api.replicas(), 2);
        // Activity without anything in flight marks the endpoint as used.
        let served = e.served();
        api.apply_usage(UsageReport {
            replica: "a".into(),
            functions: Vec::new(),
            instances: vec![InstanceUsage {
                instance_id: "i1".into(),
                in_flight: 0,
                served: 5,
            }],
        });
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.served(), served + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_replicas_are_forgotten() {
        let index = Arc::new(EndpointIndex::new());
        let api = ExecutorApi::new(
            Arc::new(Fixed(Ok(Provision::Added))),
            Arc::clone(&index),
            None,
        );
        let f = FunctionId::new("default", "hello");
        let e = Arc::new(Endpoint::new("i1", addr(), 1, 1));
        index.insert(&f, Arc::clone(&e));
        api.apply_usage(UsageReport {
            replica: "a".into(),
            functions: Vec::new(),
            instances: vec![InstanceUsage {
                instance_id: "i1".into(),
                in_flight: 1,
                served: 0,
            }],
        });
        assert_eq!(e.in_flight(), 1);
        tokio::time::advance(REPLICA_TTL + Duration::from_secs(1)).await;
        api.expire_replicas();
        assert_eq!(e.in_flight(), 0);
        assert_eq!(api.replicas(), 0);
    }
}
