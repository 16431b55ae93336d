//! The dispatcher: turns each message of a subscription into an invocation of the trigger's
//! function and settles the message by the outcome. It knows no broker.
//!
//! For each message:
//! 1. POST it to the function through [`Invoke`] (the router, so the same admission, queueing
//!    and scaling as HTTP traffic apply) with its body, its headers, `Content-Type` (the
//!    trigger's `contentType`), `X-Kappa-Topic`, `X-Kappa-Trigger`,
//!    `X-Kappa-Delivery-Attempt` and `X-Kappa-Message-Id`.
//! 2. Any 2xx is a success: the response body goes to `respTopic` (when set), **then** the
//!    message is acknowledged.
//! 3. Anything else (or no answer within the invoke timeout, or a failed publish of the
//!    response) is a failure. While the attempt is at most `maxRetries`, the message is nak'd
//!    with an exponential, jittered delay and the broker delivers it again. After that, it goes
//!    to `errorTopic` (original body and headers plus `X-Kappa-Error`, `X-Kappa-Attempts`,
//!    `X-Kappa-Status`) and is acknowledged once the error topic took it; without an error
//!    topic it is terminated and logged.
//!
//! A message is never acknowledged before its outcome is settled, so a platform killed at any
//! point loses nothing: the broker delivers what was not acknowledged again (at least once).
//! At most `maxConcurrency` messages of a trigger are processed at once (the next message is
//! asked for only below that; the messages in flight are futures of the dispatcher's own
//! task); with 1, in the order the broker delivers them.
//!
//! Each settled delivery counts once in `kappa_triggers_messages_total` by how it was settled
//! (see [`crate::metrics`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::OptionFuture;
use futures::stream::FuturesUnordered;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use kappa_core::FunctionId;
use kappa_types::MessageQueueTrigger;
use rand::RngExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::broker::{Broker, BrokerError, Delivery, Header, Message, Subscription};
use crate::metrics::{MessageResult, TriggerMetrics};

/// A subscription asking for its next message; it gives the subscription back with it.
type Receiving = dyn Future<Output = (Box<dyn Subscription>, Result<Delivery, BrokerError>)> + Send;

/// Invokes a function; `kappa up` implements it with the router.
#[async_trait]
pub trait Invoke: Send + Sync + 'static {
    /// Sends `request` to `function` and returns its response (errors are responses too,
    /// e.g. 404 for an unknown function, 504 after the function timeout).
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body>;
}

/// Exponential backoff with jitter: the n-th retry waits a random time between half and all of
/// `initial * 2^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The base delay of the first retry.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.ceiling(attempt);
        let half = base / 2;
        let jitter_ms = u64::try_from((base - half).as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        };
        half + Duration::from_millis(extra)
    }

    /// The delay without jitter (the largest [`Backoff::delay`] can return).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// How the dispatcher behaves (the same for every trigger).
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Delays between attempts.
    pub backoff: Backoff,
    /// The most a response body may have to be published to `respTopic` (larger is a failure).
    pub max_response_bytes: usize,
    /// How long to wait for in-flight messages when the trigger stops; what is still running
    /// after that is abandoned (and delivered again by the broker).
    pub drain: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_response_bytes: 8 << 20,
            drain: Duration::from_secs(10),
        }
    }
}

/// What a trigger does with its messages: the parts of a MessageQueueTrigger the dispatcher
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The trigger's namespace.
    pub namespace: String,
    /// The trigger's name.
    pub trigger: String,
    /// The function invoked.
    pub function: FunctionId,
    /// Where successful response bodies go.
    pub resp_topic: Option<String>,
    /// Where messages go after their last failed attempt.
    pub error_topic: Option<String>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// `Content-Type` of the requests.
    pub content_type: String,
    /// Messages processed at once.
    pub max_concurrency: u32,
    /// The function's timeout: an invocation without an answer after it (plus a margin) fails.
    pub invoke_timeout: Duration,
    /// OpenTelemetry's `messaging.system` of the broker (`nats`, `redis`).
    pub messaging_system: String,
}

impl Target {
    /// The target of `trigger`, whose function times out after `function_timeout`.
    pub fn of(trigger: &MessageQueueTrigger, function_timeout: Duration) -> Self {
        let ns = trigger.metadata.namespace.clone();
        Self {
            function: FunctionId::new(ns.clone(), trigger.spec.functionref.name.clone()),
            namespace: ns,
            trigger: trigger.metadata.name.clone(),
            resp_topic: trigger.spec.resp_topic.clone().filter(|t| !t.is_empty()),
            error_topic: trigger.spec.error_topic.clone().filter(|t| !t.is_empty()),
            max_retries: trigger.spec.max_retries,
            content_type: trigger.spec.content_type.clone(),
            max_concurrency: trigger.spec.max_concurrency.max(1),
            invoke_timeout: function_timeout + Duration::from_secs(5),
            messaging_system: match trigger.spec.message_queue_type.as_str() {
                "nats-jetstream" => "nats".into(),
                other => other.into(),
            },
        }
    }
}

/// Dispatches the messages of one trigger.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
    metrics: TriggerMetrics,
}

struct Inner {
    target: Target,
    invoker: Arc<dyn Invoke>,
    broker: Arc<dyn Broker>,
    config: DispatchConfig,
    /// `namespace/trigger`, the `trigger` label of the metrics.
    label: String,
}

/// What an invocation came to.
enum Outcome {
    Success {
        body: Bytes,
        content_type: Option<String>,
    },
    Failure {
        reason: String,
        status: Option<u16>,
    },
}

/// Headers a message must not pass on to the function: hop-by-hop, framing, and Kappa's and
/// Fission's own (which only the platform sets).
fn passes_on(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.starts_with("x-kappa-")
        || lower.starts_with("x-fission-")
        || matches!(
            lower.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "content-type"
                | "host"
        ))
}

/// A header value made safe for any broker: one line, at most 1 KiB (borrowed when it already
/// is, which is every value of an ordinary message).
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= 1024 && !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 1024 {
        let mut cut = 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    std::borrow::Cow::Owned(s)
}

impl Dispatcher {
    /// A dispatcher of `target`'s messages that publishes through `broker`. Its metrics are in
    /// no registry until [`Dispatcher::with_metrics`].
    pub fn new(
        target: Target,
        invoker: Arc<dyn Invoke>,
        broker: Arc<dyn Broker>,
        config: DispatchConfig,
    ) -> Self {
        let label = format!("{}/{}", target.namespace, target.trigger);
        Self {
            inner: Arc::new(Inner {
                target,
                invoker,
                broker,
                config,
                label,
            }),
            metrics: TriggerMetrics::default(),
        }
    }

    /// Records each settled message in `metrics`.
    pub fn with_metrics(mut self, metrics: TriggerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Processes messages of `subscription` until `shutdown` (then `Ok`, after in-flight
    /// messages settled or the drain time passed) or until the subscription breaks (`Err`).
    ///
    /// The messages in flight are futures polled by this task (no task per message: a spawn
    /// per message cost an allocation, and often a wake-up of another worker thread to steal
    /// it). The next message is asked for only while fewer than `max_concurrency` are in
    /// flight, so no more than that are ever held; with 1, in the order the broker delivers
    /// them, each settled before the next is asked for.
    pub async fn run(
        &self,
        subscription: Box<dyn Subscription>,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        let t = &self.inner.target;
        let max = t.max_concurrency.max(1) as usize;
        let mut inflight = FuturesUnordered::new();
        // The subscription while no message is being asked for; else the future asking for
        // it, which owns the subscription and gives it back with the message. It is never
        // dropped half-way except at the end (a receive in progress is not cancelled).
        let mut idle = Some(subscription);
        let mut receiving: Option<Pin<Box<Receiving>>> = None;
        let result = loop {
            if receiving.is_none()
                && inflight.len() < max
                && let Some(mut subscription) = idle.take()
            {
                receiving = Some(Box::pin(async move {
                    let delivery = subscription.next().await;
                    (subscription, delivery)
                }));
            }
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
                Some((subscription, delivery)) = OptionFuture::from(receiving.as_mut()),
                    if receiving.is_some() =>
                {
                    receiving = None;
                    idle = Some(subscription);
                    match delivery {
                        Ok(delivery) => {
                            let span = tracing::info_span!(
                                "message",
                                trigger = %self.inner.label,
                                function = %t.function,
                                topic = %delivery.message.topic,
                                id = %delivery.message.id,
                                attempt = delivery.message.attempt,
                            );
                            inflight.push(self.handle(delivery).instrument(span));
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        if !inflight.is_empty() {
            let drained = tokio::time::timeout(self.inner.config.drain, async {
                while inflight.next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    trigger = %t.trigger,
                    abandoned = inflight.len(),
                    "messages still in flight after the drain time; the broker will deliver them again"
                );
            }
        }
        drop(inflight);
        drop(receiving);
        drop(idle);
        result
    }

    /// Invokes the function with one message and settles it; with traces exported, in a
    /// span of its own continuing the context found in the message's headers.
    pub async fn handle(&self, delivery: Delivery) {
        if !kappa_telemetry::sampled_pairs(&delivery.message.headers) {
            return self.settle(delivery).await;
        }
        let t = &self.inner.target;
        let message = &delivery.message;
        let span = kappa_telemetry::span!(
            "message",
            otel.name = format!("process {}", message.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            faas.trigger = "pubsub",
            faas.name = &*t.function.name,
            kappa.function.namespace = &*t.function.namespace,
            kappa.trigger = %self.inner.label,
            messaging.system = t.messaging_system.as_str(),
            messaging.operation.type = "process",
            messaging.destination.name = message.topic.as_str(),
            messaging.message.id = message.id.as_str(),
            messaging.consumer.group.name = t.trigger.as_str(),
            kappa.delivery.attempt = message.attempt,
            kappa.result = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        kappa_telemetry::set_parent_from_pairs(&span, &message.headers);
        if let Some(id) = kappa_telemetry::trace_id(&span) {
            span.record("trace_id", id.as_str());
        }
        self.settle(delivery).instrument(span).await;
    }

    async fn settle(&self, delivery: Delivery) {
        let started = std::time::Instant::now();
        let (message, settle) = delivery.into_parts();
        let t = &self.inner.target;
        let outcome = match self.invoke(&message).await {
            Outcome::Success { body, content_type } => match &t.resp_topic {
                Some(topic) => {
                    let mut headers = self.kappa_headers(&message);
                    if let Some(ct) = content_type {
                        headers.push(("Content-Type".into(), ct));
                    }
                    match self.inner.broker.publish(topic, &headers, body).await {
                        Ok(()) => Ok(()),
                        Err(e) => Err((format!("publishing the response to {topic:?}: {e}"), None)),
                    }
                }
                None => Ok(()),
            },
            Outcome::Failure { reason, status } => Err((reason, status)),
        };
        let (result, settled) = match outcome {
            Ok(()) => {
                tracing::debug!("processed");
                (MessageResult::Ok, settle.ack().await)
            }
            Err((reason, _)) if message.attempt <= t.max_retries => {
                let delay = self.inner.config.backoff.delay(message.attempt);
                tracing::info!(%reason, retry_in_ms = delay.as_millis() as u64, "attempt failed; retrying");
                (MessageResult::Retried, settle.nak(delay).await)
            }
            Err((reason, status)) => match &t.error_topic {
                Some(topic) => {
                    let mut headers: Vec<Header> = message
                        .headers
                        .iter()
                        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-kappa-"))
                        .cloned()
                        .collect();
                    headers.extend(self.kappa_headers(&message));
                    headers.push(("X-Kappa-Error".into(), one_line(&reason).into_owned()));
                    headers.push(("X-Kappa-Attempts".into(), message.attempt.to_string()));
                    headers.push(("X-Kappa-Function".into(), t.function.to_string()));
                    if let Some(status) = status {
                        headers.push(("X-Kappa-Status".into(), status.to_string()));
                    }
                    match self
                        .inner
                        .broker
                        .publish(topic, &headers, message.body.clone())
                        .await
                    {
                        Ok(()) => {
                            tracing::warn!(%reason, error_topic = %topic, "message failed after its last attempt; published to the error topic");
                            (MessageResult::ErrorTopic, settle.ack().await)
                        }
                        Err(e) => {
                            let delay = self.inner.config.backoff.delay(message.attempt);
                            tracing::warn!(%reason, error = %e, "publishing to the error topic failed; keeping the message");
                            (MessageResult::ErrorTopicFailed, settle.nak(delay).await)
                        }
                    }
                }
                None => {
                    tracing::warn!(%reason, "message failed after its last attempt and the trigger has no error topic; dropping it");
                    (MessageResult::Dropped, settle.term().await)
                }
            },
        };
        let result = match settled {
            Ok(()) => result,
            Err(e) => {
                tracing::warn!(error = %e, "settling the message failed; the broker will deliver it again");
                MessageResult::SettleFailed
            }
        };
        if kappa_telemetry::enabled() {
            let span = tracing::Span::current();
            span.record("kappa.result", result.label());
            if result != MessageResult::Ok {
                span.record("otel.status_code", "ERROR");
            }
        }
        self.metrics
            .message(&self.inner.label, result, started.elapsed().as_secs_f64());
    }

    /// `X-Kappa-Topic`, `X-Kappa-Trigger`, `X-Kappa-Message-Id` for published messages.
    fn kappa_headers(&self, message: &Message) -> Vec<Header> {
        vec![
            ("X-Kappa-Topic".into(), message.topic.clone()),
            ("X-Kappa-Trigger".into(), self.inner.target.trigger.clone()),
            ("X-Kappa-Message-Id".into(), message.id.clone()),
        ]
    }

    fn request(&self, message: &Message) -> http::Request<axum::body::Body> {
        let t = &self.inner.target;
        let mut request = http::Request::new(axum::body::Body::from(message.body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("/");
        let headers = request.headers_mut();
        for (name, value) in &message.headers {
            if !passes_on(name) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(&one_line(value)) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-kappa-topic", &message.topic);
        set("x-kappa-trigger", &t.trigger);
        set("x-kappa-message-id", &message.id);
        // Fission's names, for functions written for Fission.
        set("x-fission-mqtrigger-topic", &message.topic);
        if let Some(topic) = &t.resp_topic {
            set("x-fission-mqtrigger-resptopic", topic);
        }
        if let Some(topic) = &t.error_topic {
            set("x-fission-mqtrigger-errortopic", topic);
        }
        headers.insert(
            HeaderName::from_static("x-kappa-delivery-attempt"),
            HeaderValue::from(message.attempt),
        );
        if let Ok(v) = HeaderValue::from_str(&t.content_type) {
            headers.insert(CONTENT_TYPE, v);
        }
        // The body's length, known here: with it the router writes the request on its lean
        // path (design note 013) instead of hyper's client, whose connection task costs a
        // wake-up each way per message.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(message.body.len()));
        // The message's span (when traces are exported) is the invocation's parent.
        if kappa_telemetry::enabled() {
            kappa_telemetry::inject(&tracing::Span::current(), headers);
        }
        request
    }

    async fn invoke(&self, message: &Message) -> Outcome {
        let t = &self.inner.target;
        let request = self.request(message);
        let limit = self.inner.config.max_response_bytes;
        let call = async {
            let response = self.inner.invoker.invoke(t.function.clone(), request).await;
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map(|c| c.to_bytes());
            (status, content_type, body)
        };
        match tokio::time::timeout(t.invoke_timeout, call).await {
            Err(_) => Outcome::Failure {
                reason: format!(
                    "function {} did not answer within {} s",
                    t.function,
                    t.invoke_timeout.as_secs()
                ),
                status: None,
            },
            Ok((status, content_type, body)) => match (status.is_success(), body) {
                (true, Ok(body)) => Outcome::Success { body, content_type },
                (true, Err(e)) => Outcome::Failure {
                    reason: format!(
                        "reading the response of function {}: {e} (limit {limit} bytes)",
                        t.function
                    ),
                    status: Some(status.as_u16()),
                },
                (false, body) => {
                    let snippet = body
                        .map(|b| String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned())
                        .unwrap_or_default();
                    Outcome::Failure {
                        reason: format!(
                            "function {} answered {status}{}{}",
                            t.function,
                            if snippet.trim().is_empty() { "" } else { ": " },
                            snippet.trim()
                        ),
                        status: Some(status.as_u16()),
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
        for attempt in 1..10 {
            let d = b.delay(attempt);
            assert!(d <= b.ceiling(attempt) && d >= b.ceiling(attempt) / 2);
        }
    }

    #[test]
    fn header_filters() {
        assert!(passes_on("X-Order-Id"));
        assert!(passes_on("Nats-Msg-Id"));
        assert!(!passes_on("X-Kappa-Delivery-Attempt"));
        assert!(!passes_on("content-length"));
        assert_eq!(one_line("a\r\nb"), "a  b");
        assert!(one_line(&"x".repeat(5000)).len() < 1100);
    }
}
