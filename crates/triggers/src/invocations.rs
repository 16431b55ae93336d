//! The asynchronous invocation worker: runs every accepted [`kappa_types::Invocation`] at least
//! once, with the function's retry policy, and records its outcome in the store.
//!
//! The router (`X-Kappa-Invocation-Type: async`) and the API server (`?async=true`) write an
//! Invocation before they answer `202`; from then on the store is the only state:
//! 1. **Claim.** The worker lists invocations (on every change it watches, and at least every
//!    [`AsyncConfig::scan_interval`]) and claims each due one (pending, its back-off over, or
//!    running under an expired lease) by writing status `running`, the attempt count raised and
//!    a lease (holder, expiry) with the resource version it read as a precondition: of several
//!    workers, one wins. The lease outlasts the longest an attempt can take, so a worker that
//!    crashed mid-attempt loses its claims when they expire; a worker that restarts takes over
//!    at once the leases its previous incarnation held ([`AsyncConfig::node`]).
//! 2. **Attempt.** The request is replayed through [`Invoke`] (the router: same admission,
//!    queueing and scaling as any request) with `X-Kappa-Async-Invocation-Id` and
//!    `X-Kappa-Delivery-Attempt`.
//! 3. **Outcome.** A 2xx is `succeeded`. Anything else is retried after an exponential,
//!    jittered back-off while attempts remain (the function's `retries` + 1); after the last,
//!    the invocation is dead-lettered: published to the function's `deadLetter` topic when it
//!    has one (original body, the error in headers), and in any case kept in the store as
//!    `deadlettered`. The outcome (status, body up to [`AsyncConfig::max_outcome_bytes`], error,
//!    attempts with their durations) is written with the claim's resource version, so a worker
//!    whose lease was taken over cannot overwrite the new attempt.
//! 4. **Retention.** Finished invocations are deleted [`AsyncConfig::retention`] after they
//!    finished.
//!
//! Guarantee: at least once. An attempt whose outcome was not recorded (crash, lost write) is
//! run again; a function may see the same invocation id more than once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{FutureExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use kappa_core::FunctionId;
use kappa_store::{Precondition, Store, StoreError, StoredObject};
use kappa_types::{
    ASYNC_ID_HEADER, AttemptRecord, DeadLetter, FunctionSpec, InvocationLease, InvocationPhase,
    InvocationResponse, InvocationSpec, InvocationStatus, Kind,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Connector, Header};
use crate::dispatch::{Backoff, Invoke};
use crate::metrics::{AsyncOutcome, AttemptResult, TriggerMetrics};

/// How the worker behaves.
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    /// This worker's node: leases held by `<node>/<another incarnation>` are taken over at once
    /// (the previous process on this node is gone). `kappa up` uses one name per data
    /// directory; a cluster uses the pod's name.
    pub node: String,
    /// Invocations attempted at once.
    pub concurrency: usize,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// How long finished invocations are kept.
    pub retention: Duration,
    /// How often the worker scans for due invocations without being woken.
    pub scan_interval: Duration,
    /// The most response body bytes kept in an outcome.
    pub max_outcome_bytes: usize,
    /// Added to the longest an attempt can take to make its lease.
    pub lease_margin: Duration,
    /// The NATS server of dead-letter destinations without `metadata.url`.
    pub nats_url: String,
    /// The Redis server of dead-letter destinations without `metadata.url`.
    pub redis_url: String,
    /// The Kafka cluster of dead-letter destinations without `metadata.url`.
    pub kafka_url: String,
    /// Where attempts, outcomes and queue times are recorded (`kappa_triggers_async_*`: the
    /// trigger workers' metrics, registered by their owner; unregistered by default).
    pub metrics: TriggerMetrics,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            node: "local".into(),
            concurrency: 32,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            retention: Duration::from_secs(24 * 3600),
            scan_interval: Duration::from_secs(1),
            max_outcome_bytes: 64 * 1024,
            lease_margin: Duration::from_secs(30),
            nats_url: crate::DEFAULT_NATS_URL.into(),
            redis_url: crate::DEFAULT_REDIS_URL.into(),
            kafka_url: crate::DEFAULT_KAFKA_URL.into(),
            metrics: TriggerMetrics::default(),
        }
    }
}

/// The shortest pause between two scans, so a burst of changes costs one scan, not one each.
const MIN_SCAN_GAP: Duration = Duration::from_millis(50);
/// How long stopping waits for attempts in progress (the rest are run again after restart).
const DRAIN: Duration = Duration::from_secs(5);

/// The asynchronous invocation worker.
pub struct AsyncWorker {
    store: Arc<dyn Store>,
    invoker: Arc<dyn Invoke>,
    connector: Arc<dyn Connector>,
    config: AsyncConfig,
    /// `<node>/<random>`: this incarnation's lease holder name.
    holder: String,
    /// Invocations this worker is attempting, by (namespace, name). A plain mutex: held only
    /// to insert, remove or test, never across an `.await`.
    running: Mutex<HashSet<(String, String)>>,
    /// Dead-letter brokers by (type, url), connected on first use. Plain mutex, as above.
    brokers: Mutex<HashMap<(String, String), Arc<dyn Broker>>>,
}

impl std::fmt::Debug for AsyncWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncWorker")
            .field("config", &self.config)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

fn now_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What a scan decided for one invocation.
enum Due {
    /// Attempt it now.
    Now,
    /// Not before this time.
    Later(DateTime<Utc>),
    /// Nothing to do (final, or being attempted here).
    Never,
}

impl AsyncWorker {
    pub fn new(
        config: AsyncConfig,
        store: Arc<dyn Store>,
        invoker: Arc<dyn Invoke>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let holder = format!("{}/{:016x}", config.node, rand::random::<u64>());
        Self {
            store,
            invoker,
            connector,
            config,
            holder,
            running: Mutex::new(HashSet::new()),
            brokers: Mutex::new(HashMap::new()),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        // A panic while holding it leaves a plain set in a valid state.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs until `shutdown` is cancelled; attempts in progress get [`DRAIN`] to finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(holder = %self.holder, "async invocation worker started");
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut changes = self.store.watch(&[Kind::Invocation], None);
        loop {
            while tasks.try_join_next().is_some() {}
            let next = match self.scan(&permits, &mut tasks).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "listing async invocations failed");
                    None
                }
            };
            let mut wait = self.config.scan_interval;
            if let Some(next) = next {
                let until = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                wait = wait.min(until);
            }
            tokio::time::sleep(MIN_SCAN_GAP).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait.saturating_sub(MIN_SCAN_GAP)) => {}
                // A finished attempt frees a slot: look for more work.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                event = changes.next() => match event {
                    Some(Ok(_)) => {
                        // Take whatever else is already there: one scan for the burst.
                        while let Some(Some(Ok(_))) = changes.next().now_or_never() {}
                    }
                    Some(Err(_)) | None => {
                        changes = self.store.watch(&[Kind::Invocation], None);
                    }
                },
            }
        }
        if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::info!(
                left = tasks.len(),
                "async attempts still running at shutdown; they run again after their lease"
            );
            tasks.abort_all();
        }
        tracing::info!("async invocation worker stopped");
    }

    /// One pass over the invocations: claims and starts the due ones (as many as there are free
    /// permits), deletes those past retention; returns when the next one falls due.
    async fn scan(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let list = self.store.list(Kind::Invocation, None).await?;
        let now = Utc::now();
        let mut next: Option<DateTime<Utc>> = None;
        let mut due = Vec::new();
        for object in list.items {
            let status = status_of(&object);
            match self.due(&object, &status, now) {
                Due::Now => due.push((accepted_at(&object), object, status)),
                Due::Later(at) => next = Some(next.map_or(at, |n| n.min(at))),
                Due::Never => {
                    if status.phase.is_final() {
                        self.expire(&object, &status, now).await;
                    }
                }
            }
        }
        // Oldest first.
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, object, status) in due {
            let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
                break;
            };
            let Some(claim) = self.claim(object, status).await else {
                continue;
            };
            let this = Arc::clone(self);
            tasks.spawn(async move {
                this.attempt(claim).await;
                drop(permit);
            });
        }
        Ok(next)
    }

    fn due(&self, object: &StoredObject, status: &InvocationStatus, now: DateTime<Utc>) -> Due {
        if status.phase.is_final() {
            return Due::Never;
        }
        let key = (object.namespace.clone(), object.name.clone());
        if self.lock_running().contains(&key) {
            return Due::Never;
        }
        if let Some(lease) = &status.lease {
            let mine_before = lease
                .holder
                .strip_prefix(&self.config.node)
                .is_some_and(|rest| rest.starts_with('/'))
                && lease.holder != self.holder;
            if !mine_before
                && let Some(expires) = parse_time(&lease.expires_at)
                && expires > now
            {
                return Due::Later(expires);
            }
        }
        if status.phase == InvocationPhase::Pending
            && let Some(at) = status.next_attempt_at.as_deref().and_then(parse_time)
            && at > now
        {
            return Due::Later(at);
        }
        Due::Now
    }

    /// Deletes a finished invocation past retention (its version as the precondition).
    async fn expire(&self, object: &StoredObject, status: &InvocationStatus, now: DateTime<Utc>) {
        let finished = status.finished_at.as_deref().and_then(parse_time);
        if finished.is_some_and(|at| at + to_chrono(self.config.retention) <= now)
            && let Err(error) = self
                .store
                .delete(
                    Kind::Invocation,
                    &object.namespace,
                    &object.name,
                    Precondition::ResourceVersion(object.resource_version),
                )
                .await
        {
            tracing::debug!(invocation = %object.name, %error, "deleting an expired invocation failed");
        }
    }

    /// Writes the claim (status `running`, one more attempt, a lease); `None` when another
    /// worker got there first or the invocation is unreadable (then it is finished as failed).
    async fn claim(&self, object: StoredObject, mut status: InvocationStatus) -> Option<Claim> {
        let spec: InvocationSpec = match object
            .value
            .get("spec")
            .cloned()
            .map(serde_json::from_value)
        {
            Some(Ok(spec)) => spec,
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no spec".into(),
                };
                tracing::warn!(invocation = %object.name, %why, "unreadable invocation");
                return None;
            }
        };
        let function = FunctionId::new(object.namespace.clone(), spec.function.clone());
        let settings = self.settings(&function).await;
        let max_attempts = *status.max_attempts.get_or_insert(settings.retries + 1);
        let now = Utc::now();
        let lost = status.attempts >= max_attempts;
        if lost {
            // The last attempt's worker stopped before recording how it ended.
            status.error = Some(format!(
                "the worker running attempt {} stopped before it ended",
                status.attempts
            ));
        } else {
            status.attempts += 1;
            status.phase = InvocationPhase::Running;
            status.next_attempt_at = None;
            status.lease = Some(InvocationLease {
                holder: self.holder.clone(),
                expires_at: now_text(
                    now + to_chrono(settings.attempt_bound + self.config.lease_margin),
                ),
            });
        }
        let key = (object.namespace.clone(), object.name.clone());
        if !self.lock_running().insert(key.clone()) {
            return None;
        }
        let claim = Claim {
            key,
            version: object.resource_version,
            function,
            spec,
            status,
            settings,
        };
        if lost {
            let mut claim = claim;
            let (namespace, name) = (&claim.function.namespace, &claim.function.name);
            self.config
                .metrics
                .async_attempt(namespace, name, AttemptResult::Lost);
            self.config
                .metrics
                .async_outcome(namespace, name, AsyncOutcome::Deadlettered);
            self.finish_failed(&mut claim).await;
            let key = claim.key.clone();
            self.write_outcome(claim).await;
            self.lock_running().remove(&key);
            return None;
        }
        match self
            .store
            .put_status(
                Kind::Invocation,
                &object.namespace,
                &object.name,
                serde_json::to_value(&claim.status).unwrap_or_default(),
                Precondition::ResourceVersion(object.resource_version),
            )
            .await
        {
            Ok(stored) => {
                if claim.status.attempts == 1
                    && let Some(accepted) = parse_time(&claim.spec.accepted_at)
                {
                    let waited = (now - accepted).to_std().unwrap_or_default();
                    self.config.metrics.async_queued(
                        &claim.function.namespace,
                        &claim.function.name,
                        waited.as_secs_f64(),
                    );
                }
                Some(Claim {
                    version: stored.resource_version,
                    ..claim
                })
            }
            Err(error) => {
                if !matches!(
                    error,
                    StoreError::Conflict { .. } | StoreError::NotFound { .. }
                ) {
                    tracing::warn!(invocation = %object.name, %error, "claiming an invocation failed");
                }
                self.lock_running().remove(&claim.key);
                None
            }
        }
    }

    /// The function's retry policy and time bounds (defaults when it is gone: its attempts then
    /// fail with the router's 404).
    async fn settings(&self, function: &FunctionId) -> Settings {
        let spec = match self
            .store
            .get(Kind::Function, &function.namespace, &function.name)
            .await
        {
            Ok(Some(object)) => object
                .value
                .get("spec")
                .cloned()
                .and_then(|v| serde_json::from_value::<FunctionSpec>(v).ok()),
            _ => None,
        };
        let spec = spec.unwrap_or_else(|| FunctionSpec::new("-", "-", ""));
        // Queueing (up to the timeout), a cold start, then the timeout to the response head.
        let attempt_bound =
            Duration::from_secs(spec.specialization_timeout + 2 * spec.function_timeout + 5);
        Settings {
            retries: spec.retries,
            dead_letter: spec.dead_letter,
            attempt_bound,
        }
    }

    /// Runs one claimed attempt and records how it ended.
    async fn attempt(self: Arc<Self>, mut claim: Claim) {
        let started = Utc::now();
        let clock = tokio::time::Instant::now();
        let result = match self.request(&claim) {
            Ok(request) => {
                let call = self.invoker.invoke(claim.function.clone(), request);
                match tokio::time::timeout(claim.settings.attempt_bound, call).await {
                    Ok(response) => Ok(self.read_response(response).await),
                    Err(_) => Err(format!(
                        "no response within {} s",
                        claim.settings.attempt_bound.as_secs()
                    )),
                }
            }
            Err(error) => Err(error),
        };
        let duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let attempt = claim.status.attempts;
        let mut record = AttemptRecord {
            attempt,
            started_at: now_text(started),
            duration_ms,
            status: None,
            error: None,
        };
        let success = match result {
            Ok(response) => {
                record.status = Some(response.status);
                let ok = (200..300).contains(&response.status);
                if !ok {
                    let error = format!("the function answered {}", response.status);
                    record.error = Some(error.clone());
                    claim.status.error = Some(error);
                } else {
                    claim.status.error = None;
                }
                claim.status.response = Some(response);
                ok
            }
            Err(error) => {
                record.error = Some(error.clone());
                claim.status.error = Some(error);
                false
            }
        };
        claim.status.history.push(record);
        claim.status.lease = None;
        let now = Utc::now();
        let (namespace, name) = (&claim.function.namespace, &claim.function.name);
        let (result, outcome) = if success {
            (AttemptResult::Succeeded, AsyncOutcome::Succeeded)
        } else if attempt < claim.status.max_attempts.unwrap_or(1) {
            (AttemptResult::Failed, AsyncOutcome::Retried)
        } else {
            (AttemptResult::Failed, AsyncOutcome::Deadlettered)
        };
        self.config.metrics.async_attempt(namespace, name, result);
        self.config.metrics.async_outcome(namespace, name, outcome);
        match outcome {
            AsyncOutcome::Succeeded => {
                claim.status.phase = InvocationPhase::Succeeded;
                claim.status.finished_at = Some(now_text(now));
            }
            AsyncOutcome::Retried => {
                claim.status.phase = InvocationPhase::Pending;
                let delay = self.config.backoff.delay(attempt);
                claim.status.next_attempt_at = Some(now_text(now + to_chrono(delay)));
            }
            AsyncOutcome::Deadlettered => self.finish_failed(&mut claim).await,
        }
        tracing::debug!(
            invocation = %claim.key.1,
            function = %claim.function,
            attempt,
            phase = claim.status.phase.as_str(),
            "async attempt ended"
        );
        let key = claim.key.clone();
        self.write_outcome(claim).await;
        self.lock_running().remove(&key);
    }

    /// Dead-letters a claim whose last attempt failed: publishes it to the function's
    /// dead-letter topic when it has one; in any case it stays in the store, `deadlettered`.
    async fn finish_failed(&self, claim: &mut Claim) {
        claim.status.phase = InvocationPhase::Deadlettered;
        claim.status.lease = None;
        claim.status.next_attempt_at = None;
        claim.status.finished_at = Some(now_text(Utc::now()));
        claim.status.dead_letter = Some("store".into());
        let Some(dead_letter) = claim.settings.dead_letter.clone() else {
            return;
        };
        let destination = format!("{}:{}", dead_letter.message_queue_type, dead_letter.topic);
        match self.publish_dead_letter(&dead_letter, claim).await {
            Ok(()) => claim.status.dead_letter = Some(destination),
            Err(error) => {
                tracing::warn!(invocation = %claim.key.1, %destination, %error, "publishing a dead letter failed; kept in the store");
                let previous = claim.status.error.take().unwrap_or_default();
                claim.status.error = Some(format!(
                    "{previous}; publishing to the dead-letter topic {destination} failed: {error}"
                ));
            }
        }
    }

    async fn publish_dead_letter(
        &self,
        dead_letter: &DeadLetter,
        claim: &Claim,
    ) -> Result<(), String> {
        let url = dead_letter.metadata.get("url").cloned().unwrap_or_else(|| {
            match dead_letter.message_queue_type.as_str() {
                "redis" => self.config.redis_url.clone(),
                "kafka" => self.config.kafka_url.clone(),
                _ => self.config.nats_url.clone(),
            }
        });
        let key = (dead_letter.message_queue_type.clone(), url.clone());
        let cached = self
            .brokers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let broker = match cached {
            Some(broker) => broker,
            None => {
                let broker = self
                    .connector
                    .connect(&dead_letter.message_queue_type, &url)
                    .await
                    .map_err(|e| e.to_string())?;
                self.brokers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, Arc::clone(&broker));
                broker
            }
        };
        let body = claim.spec.body_bytes().unwrap_or_default();
        let mut headers: Vec<Header> = claim
            .spec
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-type"))
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        headers.push(("X-Kappa-Invocation-Id".into(), claim.key.1.clone()));
        headers.push(("X-Kappa-Function".into(), claim.function.to_string()));
        headers.push(("X-Kappa-Attempts".into(), claim.status.attempts.to_string()));
        if let Some(status) = claim.status.response.as_ref().map(|r| r.status) {
            headers.push(("X-Kappa-Status".into(), status.to_string()));
        }
        if let Some(error) = &claim.status.error {
            headers.push(("X-Kappa-Error".into(), error.replace(['\r', '\n'], " ")));
        }
        broker
            .publish(&dead_letter.topic, &headers, Bytes::from(body))
            .await
            .map_err(|e| e.to_string())?;
        // The outcome written next says the dead letter was published: it must be on the
        // server before that, even when the process is killed right after.
        broker.flush().await.map_err(|e| e.to_string())
    }

    /// Writes a claim's status with the claim's version as the precondition; a conflict means
    /// another worker took the invocation over (its outcome wins).
    async fn write_outcome(&self, claim: Claim) {
        let status = serde_json::to_value(&claim.status).unwrap_or_default();
        for _ in 0..3 {
            match self
                .store
                .put_status(
                    Kind::Invocation,
                    &claim.key.0,
                    &claim.key.1,
                    status.clone(),
                    Precondition::ResourceVersion(claim.version),
                )
                .await
            {
                Ok(_) => return,
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                    tracing::info!(invocation = %claim.key.1, "invocation changed meanwhile; this attempt's outcome is dropped");
                    return;
                }
                Err(error) => {
                    tracing::warn!(invocation = %claim.key.1, %error, "recording an outcome failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!(invocation = %claim.key.1, "outcome not recorded; the invocation runs again after its lease");
    }

    fn request(&self, claim: &Claim) -> Result<http::Request<axum::body::Body>, String> {
        let body = claim
            .spec
            .body_bytes()
            .map_err(|e| format!("the stored body is not base64: {}", e.message))?;
        let mut builder = http::Request::builder()
            .method(claim.spec.method.as_str())
            .uri(claim.spec.path.as_str());
        for header in &claim.spec.headers {
            builder = builder.header(header.name.as_str(), header.value.as_str());
        }
        builder
            .header(ASYNC_ID_HEADER, claim.key.1.as_str())
            .header(kappa_types::INVOCATION_TYPE_HEADER, "async")
            .header(
                "x-kappa-delivery-attempt",
                claim.status.attempts.to_string(),
            )
            .body(axum::body::Body::from(body))
            .map_err(|e| format!("the stored request is not valid: {e}"))
    }

    /// The response's status, content type and body up to the outcome limit.
    async fn read_response(
        &self,
        response: http::Response<axum::body::Body>,
    ) -> InvocationResponse {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let limit = self.config.max_outcome_bytes;
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                let room = limit.saturating_sub(kept.len());
                if data.len() > room {
                    kept.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                kept.extend_from_slice(&data);
            }
        }
        let (body, body_encoding) = match String::from_utf8(kept) {
            Ok(text) => (text, "utf8"),
            Err(e) => (
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                "base64",
            ),
        };
        InvocationResponse {
            status,
            content_type,
            body,
            body_encoding: body_encoding.into(),
            truncated,
        }
    }
}

/// The function settings an attempt needs.
#[derive(Debug, Clone)]
struct Settings {
    retries: u32,
    dead_letter: Option<DeadLetter>,
    /// The longest one attempt may take.
    attempt_bound: Duration,
}

/// A claimed invocation.
struct Claim {
    key: (String, String),
    /// The resource version of the claim's write (the outcome's precondition).
    version: u64,
    function: FunctionId,
    spec: InvocationSpec,
    status: InvocationStatus,
    settings: Settings,
}

fn status_of(object: &StoredObject) -> InvocationStatus {
    object
        .value
        .get("status")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

fn accepted_at(object: &StoredObject) -> String {
    object
        .value
        .pointer("/spec/acceptedAt")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}
