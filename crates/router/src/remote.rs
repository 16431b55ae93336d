//! The router's side of a pool manager in another process (`kappa server --role router`).
//!
//! - [`RemoteProvisioner`] implements [`Provisioner`] over the executor's `POST /v1/provision`
//!   and maps its JSON error body back to the same [`ProvisionError`] the in-process pool
//!   manager returns. After `added` it waits (at most [`FEED_WAIT`]) until the feeder has put an
//!   endpoint of that generation into the local index, so the caller's next admission finds it.
//! - [`EndpointFeeder`] mirrors the executor's endpoint events
//!   (`GET /v1/endpoints?watch=true`, NDJSON) into this router's own [`EndpointIndex`], and
//!   reports this replica's in-flight requests per instance to `POST /v1/usage` every
//!   [`RemoteConfig::usage_interval`]. Each router replica admits on its own copy of an
//!   endpoint with the endpoint's full capacity; `docs/design/002-router-replicas.md` says what
//!   over-admission across replicas this accepts and why. It writes the index through a
//!   [`ReadinessGate`], which also keeps out endpoints whose pods are not ready when a pod
//!   watcher reports them ([`EndpointFeeder::with_gate`]; without one, the feed alone decides).
//!
//! Warm requests still make no call to the executor: only the feeder and the reporter talk to
//! it, in the background. When the executor is unreachable the mirrored endpoints stay (their
//! instances are likely alive) and the feeder reconnects with a bounded backoff, then
//! resynchronises: endpoints the executor no longer has are removed.
//!
//! The wire types are [`kappa_core::executor_api`], the one declaration both sides use, so the
//! router does not depend on the pool manager; the tests run both against each other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use kappa_core::executor_api::{
    ENDPOINTS_PATH, FeedEvent, InstanceUsage, PROVISION_PATH, ProvisionErrorBody, ProvisionRequest,
    ProvisionResponse, STATS_PATH, StatsReport, USAGE_PATH, UsageReport,
};
use kappa_core::{EndpointIndex, FunctionId, InstanceAddr, Provision, ProvisionError, Provisioner};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::readiness::ReadinessGate;

/// How long `provision` waits for the feeder to bring an added endpoint into the local index.
pub const FEED_WAIT: Duration = Duration::from_secs(2);
/// Longest NDJSON line accepted from the executor.
const MAX_LINE: usize = 64 * 1024;
/// The feed sends a heartbeat every 5 s; silence for this long means a dead connection.
const FEED_SILENCE: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the executor is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The executor API's base URL, e.g. `http://kappa-executor:8891`.
    pub executor_url: String,
    /// Bearer token for the executor API.
    pub token: Option<String>,
    /// This router replica's stable name in usage reports (its pod name).
    pub replica: String,
    /// How often usage is reported.
    pub usage_interval: Duration,
    /// How often this replica's request history is sent (`POST /v1/stats`), when the feeder
    /// has one ([`EndpointFeeder::with_stats`]).
    pub stats_interval: Duration,
    /// Upper bound on one provision call (the executor enforces the function's own
    /// specialization timeout; this only guards against a hung connection).
    pub provision_timeout: Duration,
    /// Connect timeout for every call.
    pub connect_timeout: Duration,
}

impl RemoteConfig {
    /// Defaults for `executor_url`: usage every second, 10 min provision bound, 5 s connect.
    pub fn new(executor_url: impl Into<String>, replica: impl Into<String>) -> Self {
        Self {
            executor_url: executor_url.into().trim_end_matches('/').to_string(),
            token: None,
            replica: replica.into(),
            usage_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(5),
            provision_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the remote executor client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The executor URL is not an `http://` or `https://` URL.
    #[error("executor URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    /// The HTTP client could not be created.
    #[error("creating the HTTP client failed: {0}")]
    Client(#[source] reqwest::Error),
}

fn client(config: &RemoteConfig) -> Result<reqwest::Client, RemoteError> {
    let url = &config.executor_url;
    let parsed = reqwest::Url::parse(url).map_err(|e| RemoteError::Url {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(RemoteError::Url {
            url: url.clone(),
            reason: "the scheme must be http or https".into(),
        });
    }
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(RemoteError::Client)
}

fn with_token(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// [`Provisioner`] over the executor's HTTP API.
#[derive(Debug, Clone)]
pub struct RemoteProvisioner {
    client: reqwest::Client,
    config: RemoteConfig,
    index: Arc<EndpointIndex>,
}

impl RemoteProvisioner {
    /// A provisioner asking the executor at `config.executor_url`; `index` is this router's
    /// index (fed by an [`EndpointFeeder`]), watched after `added`.
    pub fn new(config: RemoteConfig, index: Arc<EndpointIndex>) -> Result<Self, RemoteError> {
        Ok(Self {
            client: client(&config)?,
            config,
            index,
        })
    }

    /// Waits until the local index has a non-draining endpoint of `generation` for `function`
    /// with a free slot, or `limit` passed.
    async fn wait_for_endpoint(&self, function: &FunctionId, generation: i64, limit: Duration) {
        let entry = self.index.entry(function);
        let deadline = Instant::now() + limit;
        loop {
            let changed = entry.changed();
            let present = entry.endpoints().iter().any(|e| {
                e.generation == generation && !e.is_draining() && e.in_flight() < e.capacity
            });
            if present {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

#[async_trait]
impl Provisioner for RemoteProvisioner {
    async fn provision(
        &self,
        function: &FunctionId,
        generation: i64,
    ) -> Result<Provision, ProvisionError> {
        let url = format!("{}{PROVISION_PATH}", self.config.executor_url);
        let request = self
            .client
            .post(&url)
            .timeout(self.config.provision_timeout)
            .headers(kappa_telemetry::context_headers())
            .json(&ProvisionRequest {
                namespace: function.namespace.clone(),
                name: function.name.clone(),
                generation,
            });
        let response = with_token(request, self.config.token.as_deref())
            .send()
            .await
            .map_err(|e| {
                ProvisionError::Unavailable(format!(
                    "the executor at {} did not answer: {e}",
                    self.config.executor_url
                ))
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            ProvisionError::Unavailable(format!("reading the executor's answer failed: {e}"))
        })?;
        if status.is_success() {
            let body: ProvisionResponse = serde_json::from_slice(&bytes).map_err(|e| {
                ProvisionError::Unavailable(format!("the executor's answer is not valid: {e}"))
            })?;
            return match body.provision() {
                Some(Provision::Added) => {
                    self.wait_for_endpoint(function, generation, FEED_WAIT)
                        .await;
                    Ok(Provision::Added)
                }
                Some(Provision::AtCapacity) => Ok(Provision::AtCapacity),
                None => Err(ProvisionError::Unavailable(format!(
                    "the executor answered an unknown result {:?}",
                    body.result
                ))),
            };
        }
        match serde_json::from_slice::<ProvisionErrorBody>(&bytes) {
            Ok(ProvisionErrorBody {
                provision_error: Some(wire),
                ..
            }) => Err(wire.into()),
            Ok(ProvisionErrorBody {
                error: Some(detail),
                ..
            }) => Err(ProvisionError::Unavailable(format!(
                "the executor answered {status}: {}",
                detail.message
            ))),
            _ => Err(ProvisionError::Unavailable(format!(
                "the executor answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ))),
        }
    }
}

/// Mirrors the executor's endpoints into this router's index and reports this replica's usage.
#[derive(Debug, Clone)]
pub struct EndpointFeeder {
    client: reqwest::Client,
    config: RemoteConfig,
    /// The only writer of this router's index: the feed's endpoints minus not-ready pods'.
    gate: Arc<ReadinessGate>,
    /// `true` once the first full endpoint list was applied (readiness). A `watch` channel so
    /// callers can await it.
    synced: watch::Sender<bool>,
    /// This replica's request history, sent to the executor for the API's dashboard.
    stats: Option<Arc<kappa_core::StatsRegistry>>,
    /// This replica's request outcomes, sent with each usage report when set.
    outcomes: Option<Arc<kappa_core::Outcomes>>,
}

/// Why one feed connection ended.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("connecting failed: {0}")]
    Connect(#[source] reqwest::Error),
    #[error("the executor answered {0}")]
    Status(reqwest::StatusCode),
    #[error("reading the stream failed: {0}")]
    Read(#[source] reqwest::Error),
    #[error("no data (not even a heartbeat) for {} s", FEED_SILENCE.as_secs())]
    Silent,
    #[error("a line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the stream ended")]
    Ended,
}

impl EndpointFeeder {
    /// A feeder of `index` (this router's own) from the executor at `config.executor_url`,
    /// on the feed alone.
    pub fn new(config: RemoteConfig, index: Arc<EndpointIndex>) -> Result<Self, RemoteError> {
        Self::with_gate(config, Arc::new(ReadinessGate::new(index)))
    }

    /// A feeder writing its gate's index, so that pods the gate knows to be not ready stay
    /// out of it (the gate is shared with the pod watcher).
    pub fn with_gate(config: RemoteConfig, gate: Arc<ReadinessGate>) -> Result<Self, RemoteError> {
        let (synced, _) = watch::channel(false);
        Ok(Self {
            client: client(&config)?,
            config,
            gate,
            synced,
            stats: None,
            outcomes: None,
        })
    }

    /// Sends `outcomes` (the router's, [`crate::Router::outcomes`]) with every usage report, so
    /// the executor's canary controller sees this replica's requests.
    pub fn with_outcomes(mut self, outcomes: Arc<kappa_core::Outcomes>) -> Self {
        self.outcomes = Some(outcomes);
        self
    }

    /// Also sends `stats` (the router's request history, `Router::stats`) to the executor
    /// every [`RemoteConfig::stats_interval`], which sums every replica's for the API server.
    pub fn with_stats(mut self, stats: Arc<kappa_core::StatsRegistry>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The gate this feeder writes the index through.
    pub fn gate(&self) -> &Arc<ReadinessGate> {
        &self.gate
    }

    /// Whether the first endpoint list has been applied.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits at most `limit` for the first endpoint list; returns whether it arrived.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|s| *s)).await,
            Ok(Ok(_))
        )
    }

    /// Follows the feed and reports usage until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let reporter = {
            let this = self.clone();
            let token = shutdown.clone();
            tokio::spawn(async move { this.report_usage(token).await })
        };
        let stats_reporter = self.stats.clone().map(|stats| {
            let this = self.clone();
            let token = shutdown.clone();
            tokio::spawn(async move { this.report_stats(stats, token).await })
        });
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.follow() => r,
            };
            if let Err(error) = result {
                tracing::warn!(executor = %self.config.executor_url, %error, retry_ms = backoff.as_millis() as u64, "endpoint feed interrupted");
            }
            if started.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        reporter.abort();
        if let Some(stats_reporter) = stats_reporter {
            stats_reporter.abort();
        }
    }

    /// One connection: list, then changes, until it fails.
    async fn follow(&self) -> Result<(), FeedError> {
        let url = format!("{}{ENDPOINTS_PATH}?watch=true", self.config.executor_url);
        let response = with_token(self.client.get(&url), self.config.token.as_deref())
            .send()
            .await
            .map_err(FeedError::Connect)?;
        if !response.status().is_success() {
            return Err(FeedError::Status(response.status()));
        }
        tracing::debug!(executor = %self.config.executor_url, "endpoint feed connected");
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        // Instances listed since this connection began, until `synced`.
        let mut listed: Option<HashSet<String>> = Some(HashSet::new());
        loop {
            let chunk = match tokio::time::timeout(FEED_SILENCE, stream.next()).await {
                Err(_) => return Err(FeedError::Silent),
                Ok(None) => return Err(FeedError::Ended),
                Ok(Some(Err(e))) => return Err(FeedError::Read(e)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<FeedEvent>(line) {
                    Ok(event) => self.apply(event, &mut listed),
                    Err(e) => {
                        tracing::warn!(error = %e, line = %String::from_utf8_lossy(line), "ignoring an unreadable endpoint event")
                    }
                }
            }
            if buffer.len() > MAX_LINE {
                return Err(FeedError::LineTooLong);
            }
        }
    }

    fn apply(&self, event: FeedEvent, listed: &mut Option<HashSet<String>>) {
        match event {
            FeedEvent::Added {
                namespace,
                function,
                instance_id,
                address,
                generation,
                capacity,
            } => {
                let Ok(addr) = address.parse::<InstanceAddr>() else {
                    tracing::warn!(instance = %instance_id, %address, "ignoring an endpoint with an unreadable address");
                    return;
                };
                let function = FunctionId::new(namespace, function);
                self.gate
                    .feed_added(&function, &instance_id, addr, generation, capacity);
                if let Some(listed) = listed.as_mut() {
                    listed.insert(instance_id);
                }
            }
            FeedEvent::Draining {
                namespace,
                function,
                instance_id,
            } => {
                if self.gate.feed_draining(&instance_id) {
                    tracing::debug!(function = %FunctionId::new(namespace, function), instance = %instance_id, "endpoint draining");
                }
            }
            FeedEvent::Removed {
                namespace,
                function,
                instance_id,
                exit,
            } => {
                if let Some(e) = self.gate.feed_removed(&instance_id) {
                    match exit {
                        Some(reason) => e.set_exit(reason),
                        None => e.mark_draining(),
                    }
                }
                tracing::debug!(function = %FunctionId::new(namespace, function), instance = %instance_id, "endpoint removed");
            }
            FeedEvent::Synced => {
                if let Some(listed) = listed.take() {
                    // Endpoints the executor no longer has (missed while disconnected) go.
                    for e in self.gate.feed_retain(|id| listed.contains(id)) {
                        e.mark_draining();
                    }
                }
                self.synced.send_replace(true);
            }
            FeedEvent::Heartbeat => {}
        }
    }

    /// Sends this replica's request history every `stats_interval` (the whole last hour each
    /// time, so a lost report loses nothing).
    async fn report_stats(
        &self,
        stats: Arc<kappa_core::StatsRegistry>,
        shutdown: CancellationToken,
    ) {
        let url = format!("{}{STATS_PATH}", self.config.executor_url);
        let mut tick = tokio::time::interval(self.config.stats_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let report = StatsReport {
                replica: self.config.replica.clone(),
                snapshot: stats.snapshot(),
            };
            let request = self
                .client
                .post(&url)
                .timeout(self.config.stats_interval.max(Duration::from_secs(5)))
                .json(&report);
            match with_token(request, self.config.token.as_deref())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::debug!(status = %r.status(), "stats report refused"),
                Err(e) => tracing::debug!(error = %e, "stats report failed"),
            }
        }
    }

    /// Sends this replica's in-flight counts and finished requests per instance, every
    /// `usage_interval`.
    async fn report_usage(&self, shutdown: CancellationToken) {
        let url = format!("{}{USAGE_PATH}", self.config.executor_url);
        let mut last_served: HashMap<String, u64> = HashMap::new();
        let mut tick = tokio::time::interval(self.config.usage_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut instances = Vec::new();
            let mut served_now = HashMap::new();
            // Endpoints held out of the index (pod not ready) still finish what they admitted.
            for e in self.gate.endpoints() {
                let served = e.served();
                let before = last_served.get(&e.instance_id).copied().unwrap_or(0);
                served_now.insert(e.instance_id.clone(), served);
                instances.push(InstanceUsage {
                    instance_id: e.instance_id.clone(),
                    in_flight: e.in_flight(),
                    served: served.saturating_sub(before),
                });
            }
            let report = UsageReport {
                replica: self.config.replica.clone(),
                instances,
                functions: self
                    .outcomes
                    .as_ref()
                    .map(|o| o.snapshot())
                    .unwrap_or_default(),
            };
            let request = self
                .client
                .post(&url)
                .timeout(self.config.usage_interval.max(Duration::from_secs(2)))
                .json(&report);
            match with_token(request, self.config.token.as_deref())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => last_served = served_now,
                Ok(r) => tracing::debug!(status = %r.status(), "usage report refused"),
                Err(e) => tracing::debug!(error = %e, "usage report failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeder() -> (EndpointFeeder, Arc<EndpointIndex>) {
        let index = Arc::new(EndpointIndex::new());
        let f = EndpointFeeder::new(
            RemoteConfig::new("http://127.0.0.1:1", "r1"),
            Arc::clone(&index),
        )
        .unwrap();
        (f, index)
    }

    fn added(id: &str, port: u16, generation: i64) -> FeedEvent {
        FeedEvent::Added {
            namespace: "default".into(),
            function: "hello".into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            generation,
            capacity: 2,
        }
    }

    #[test]
    fn events_update_the_index_and_resync_drops_stale_endpoints() {
        let (feeder, index) = feeder();
        let f = FunctionId::new("default", "hello");
        let mut listed = Some(HashSet::new());
        feeder.apply(added("a", 1000, 1), &mut listed);
        feeder.apply(added("b", 1001, 1), &mut listed);
        feeder.apply(FeedEvent::Synced, &mut listed);
        assert!(feeder.is_synced());
        assert_eq!(index.endpoints(&f).len(), 2);

        // A slot taken on "a" survives a re-announcement of the same endpoint.
        let permit = index.get(&f).unwrap().try_admit(1).unwrap();
        let held = permit.endpoint().instance_id.clone();
        let mut listed = Some(HashSet::new());
        feeder.apply(
            added(&held, if held == "a" { 1000 } else { 1001 }, 1),
            &mut listed,
        );
        assert_eq!(
            index
                .endpoints(&f)
                .iter()
                .find(|e| e.instance_id == held)
                .unwrap()
                .in_flight(),
            1
        );
        // The other one is gone after the resync.
        feeder.apply(FeedEvent::Synced, &mut listed);
        let ids: Vec<_> = index
            .endpoints(&f)
            .iter()
            .map(|e| e.instance_id.clone())
            .collect();
        assert_eq!(ids, vec![held.clone()]);
        drop(permit);

        let mut listed = None;
        feeder.apply(
            FeedEvent::Draining {
                namespace: "default".into(),
                function: "hello".into(),
                instance_id: held.clone(),
            },
            &mut listed,
        );
        assert!(
            index.get(&f).unwrap().try_admit(1).is_none(),
            "draining admits nothing"
        );
        let e = index.endpoints(&f).pop().unwrap();
        feeder.apply(
            FeedEvent::Removed {
                namespace: "default".into(),
                function: "hello".into(),
                instance_id: held,
                exit: Some("exited with signal 9 (out of memory)".into()),
            },
            &mut listed,
        );
        assert!(index.endpoints(&f).is_empty());
        assert_eq!(
            e.exit_reason(),
            Some("exited with signal 9 (out of memory)")
        );
        assert!(feeder.gate().endpoints().is_empty());
    }

    #[test]
    fn a_shared_gate_keeps_what_the_feed_adds_out_while_its_pod_is_not_ready() {
        use kappa_core::Readiness as _;
        let gate = Arc::new(ReadinessGate::new(Arc::new(EndpointIndex::new())));
        let feeder = EndpointFeeder::with_gate(
            RemoteConfig::new("http://127.0.0.1:1", "r1"),
            Arc::clone(&gate),
        )
        .unwrap();
        let f = FunctionId::new("default", "hello");
        let ids = || {
            let mut ids: Vec<String> = gate
                .index()
                .endpoints(&f)
                .iter()
                .map(|e| e.instance_id.clone())
                .collect();
            ids.sort();
            ids
        };
        gate.set_ready("a", false);
        let mut listed = Some(HashSet::new());
        feeder.apply(added("a", 1000, 1), &mut listed);
        feeder.apply(added("b", 1001, 1), &mut listed);
        feeder.apply(FeedEvent::Synced, &mut listed);
        assert_eq!(ids(), ["b"]);
        gate.set_ready("a", true);
        assert_eq!(ids(), ["a", "b"]);

        // An endpoint held out when the executor removes it still learns why it ended.
        gate.set_ready("a", false);
        let a = gate
            .endpoints()
            .into_iter()
            .find(|e| e.instance_id == "a")
            .unwrap();
        feeder.apply(
            FeedEvent::Removed {
                namespace: "default".into(),
                function: "hello".into(),
                instance_id: "a".into(),
                exit: Some("exited with code 1".into()),
            },
            &mut None,
        );
        assert_eq!(a.exit_reason(), Some("exited with code 1"));
        gate.set_ready("a", true);
        assert_eq!(
            ids(),
            ["b"],
            "removed by the feed: a ready pod does not bring it back"
        );

        // A resync drops endpoints the executor no longer lists, held out or not.
        gate.set_ready("b", false);
        let mut listed = Some(HashSet::new());
        feeder.apply(FeedEvent::Synced, &mut listed);
        assert!(gate.endpoints().is_empty());
        assert!(ids().is_empty());
    }

    #[test]
    fn bad_urls_are_refused() {
        let index = Arc::new(EndpointIndex::new());
        let e = RemoteProvisioner::new(RemoteConfig::new("ftp://x", "r"), Arc::clone(&index))
            .unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
        let e = EndpointFeeder::new(RemoteConfig::new("not a url", "r"), index).unwrap_err();
        assert!(e.to_string().contains("not a url"), "{e}");
    }

    #[test]
    fn error_bodies_map_back_to_provision_errors() {
        let body = r#"{"error":{"code":"specialize_failed","message":"m"},
            "provisionError":{"kind":"specialize","message":"boom","detail":"tb"}}"#;
        let env: ProvisionErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(
            ProvisionError::from(env.provision_error.unwrap()),
            ProvisionError::Specialize {
                message: "boom".into(),
                detail: Some("tb".into())
            }
        );
        let body = r#"{"provisionError":{"kind":"timeout","seconds":9}}"#;
        let env: ProvisionErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(
            ProvisionError::from(env.provision_error.unwrap()),
            ProvisionError::Timeout(Duration::from_secs(9))
        );
    }
}
