//! NATS JetStream: one durable pull consumer per trigger on the stream that captures its topic.
//!
//! - The stream is `metadata.stream` when given (it must exist), else the stream that already
//!   captures the topic, else a new stream `KAPPA_<TOPIC>` (file storage, interest retention:
//!   a message is kept until every trigger consuming it acknowledged it).
//! - The consumer is durable (`kappa-<namespace>-<trigger>`), explicit-ack, with
//!   `max_ack_pending` equal to the trigger's `maxConcurrency` and an ack wait that covers the
//!   function timeout. Its position lives on the server: a restarted platform picks up where
//!   it was, and what it had not acknowledged is delivered again.
//! - With `maxConcurrency` 1 the server may have [`ORDERED_WINDOW`] messages out, so the next
//!   message is already here when the previous one is acknowledged (no round trip from the
//!   ack to the next delivery). The subscription hands them out one at a time in stream order:
//!   once a message is nak'd for a retry, the messages after it that already arrived are held
//!   until its redelivery came and was handed out, so no message is handed out before the
//!   ones before it succeeded or went to the error topic, retries included.
//! - A nak carries the retry delay (`-NAK {"delay": ...}`), so the server redelivers it then.
//! - Publishing goes through JetStream when a stream captures the subject (and waits for the
//!   server's acknowledgement), else as a plain NATS message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::broker::{
    Broker, BrokerError, ConsumerSpec, Delivery, Header, Message, Settle, Subscription,
};

/// Messages asked for per pull request. The server never has more than `max_ack_pending`
/// unacknowledged messages out, so a larger batch does not raise what the consumer holds; it
/// keeps a pull request open, so the next message comes as soon as the previous one is
/// acknowledged instead of after another request round trip.
const PULL_BATCH: usize = 256;
/// Consecutive receive errors after which a subscription is reported broken.
const MAX_RECEIVE_ERRORS: u32 = 20;
/// `max_ack_pending` of a consumer with `maxConcurrency` 1: the message being processed plus
/// one delivered ahead, held by the subscription until the one before it is settled. One ahead
/// keeps the next message ready; a held message waits for at most one invocation (the
/// function timeout plus 5 s), within its ack wait (the function timeout plus 10 s).
pub const ORDERED_WINDOW: i64 = 2;

/// A connection to a NATS server with JetStream enabled.
#[derive(Debug, Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    /// Whether a stream captures a subject we publish to, as last looked up (and when). A
    /// JetStream publish to a subject no stream captures but a plain subscriber listens on
    /// would wait for an acknowledgement that never comes, so we look first. A std mutex:
    /// held for one map operation, never across an await.
    captured: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

/// How long a "does a stream capture this subject" answer is reused.
const CAPTURE_TTL: Duration = Duration::from_secs(10);

impl NatsBroker {
    /// Connects to `url` (`nats://host:port`). Fails fast when nothing answers; once connected,
    /// the client reconnects by itself.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let client = async_nats::ConnectOptions::new()
            .name("kappa-triggers")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BrokerError::Connect(format!("connecting to NATS at {url}: {e}")))?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            url: url.to_string(),
            captured: Arc::default(),
        })
    }

    /// Whether a JetStream stream captures `subject` (cached for [`CAPTURE_TTL`]).
    async fn is_captured(&self, subject: &str) -> bool {
        if let Some((captured, at)) = self
            .captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            && at.elapsed() < CAPTURE_TTL
        {
            return *captured;
        }
        let captured = self.js.stream_by_subject(subject.to_string()).await.is_ok();
        let mut cache = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(subject.to_string(), (captured, Instant::now()));
        captured
    }

    /// The underlying client (tests publish and subscribe with it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The stream `spec` consumes from, created when none captures its topic.
    async fn stream_for(&self, spec: &ConsumerSpec) -> Result<stream::Stream, BrokerError> {
        let url = &self.url;
        if let Some(name) = spec.metadata.get("stream") {
            return self.js.get_stream(name).await.map_err(|e| {
                BrokerError::Setup(format!(
                    "stream {name:?} (metadata.stream) on NATS at {url}: {e}"
                ))
            });
        }
        let name = match self.js.stream_by_subject(spec.topic.clone()).await {
            Ok(name) => name,
            Err(_) => {
                let name = stream_name(&spec.topic);
                tracing::info!(stream = %name, topic = %spec.topic, "creating a JetStream stream for the topic");
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![spec.topic.clone()],
                    retention: stream::RetentionPolicy::Interest,
                    storage: stream::StorageType::File,
                    ..stream::Config::default()
                };
                let stream = self.js.get_or_create_stream(config).await.map_err(|e| {
                    BrokerError::Setup(format!(
                        "creating stream {name} for topic {:?} on NATS at {url}: {e} (is JetStream enabled? nats-server -js)",
                        spec.topic
                    ))
                })?;
                return Ok(stream);
            }
        };
        self.js
            .get_stream(&name)
            .await
            .map_err(|e| BrokerError::Setup(format!("stream {name} on NATS at {url}: {e}")))
    }
}

/// `KAPPA_` and the topic in upper case, with what a stream name cannot hold replaced by `_`.
pub fn stream_name(topic: &str) -> String {
    let mut name = String::from("KAPPA_");
    name.extend(topic.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

fn header_map(headers: &[Header]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

#[async_trait]
impl Broker for NatsBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        let url = &self.url;
        let stream = self.stream_for(spec).await?;
        let stream_name = stream.cached_info().config.name.clone();
        self.captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.topic.clone(), (true, Instant::now()));
        let name = &spec.durable_name;
        // The filter subject of an existing consumer cannot change: a trigger whose topic
        // changed within the same stream starts a new consumer.
        if let Ok(mut existing) = stream.get_consumer::<pull::Config>(name).await
            && let Ok(info) = existing.info().await
            && info.config.filter_subject != spec.topic
        {
            tracing::info!(consumer = %name, stream = %stream_name, "the topic changed; recreating the consumer");
            if let Err(e) = stream.delete_consumer(name).await {
                tracing::warn!(consumer = %name, error = %e, "deleting the old consumer failed");
            }
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: spec.topic.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_ack_pending: if spec.max_in_flight <= 1 {
                ORDERED_WINDOW
            } else {
                i64::from(spec.max_in_flight)
            },
            max_deliver: -1,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            description: Some("kappa message queue trigger".into()),
            ..pull::Config::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|e| {
            BrokerError::Setup(format!(
                "creating consumer {name} on stream {stream_name} at {url}: {e}"
            ))
        })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH.max(spec.max_in_flight as usize))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| {
                BrokerError::Setup(format!("pulling from consumer {name} at {url}: {e}"))
            })?;
        Ok(Box::new(NatsSubscription {
            messages,
            name: name.clone(),
            url: url.clone(),
            ordered: (spec.max_in_flight <= 1).then(|| Ordered::new(spec.ack_wait)),
        }))
    }

    async fn publish(
        &self,
        topic: &str,
        headers: &[Header],
        body: Bytes,
    ) -> Result<(), BrokerError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let url = &self.url;
        let fail = |e: &dyn std::fmt::Display| {
            BrokerError::Publish(format!("publishing to {topic:?} on NATS at {url}: {e}"))
        };
        let map = header_map(headers);
        if !self.is_captured(topic).await {
            // A plain NATS message, written before anything this connection sends later (such
            // as the acknowledgement that follows it).
            return self
                .client
                .publish_with_headers(topic.to_string(), map, body)
                .await
                .map_err(|e| fail(&e));
        }
        let stored = match self
            .js
            .publish_with_headers(topic.to_string(), map, body)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.kind() == PublishErrorKind::StreamNotFound {
                    self.captured
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(topic);
                }
                Err(fail(&e))
            }
        }
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.client.flush().await.map_err(|e| {
            BrokerError::Publish(format!(
                "flushing the connection to NATS at {}: {e}",
                self.url
            ))
        })
    }

    async fn remove(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        let stream = match spec.metadata.get("stream") {
            Some(name) => name.clone(),
            None => match self.js.stream_by_subject(spec.topic.clone()).await {
                Ok(name) => name,
                Err(_) => return Ok(()),
            },
        };
        match self
            .js
            .delete_consumer_from_stream(&spec.durable_name, &stream)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(BrokerError::Setup(format!(
                "deleting consumer {} of stream {stream} at {}: {e}",
                spec.durable_name, self.url
            ))),
        }
    }
}

struct NatsSubscription {
    messages: pull::Stream,
    name: String,
    url: String,
    /// With `maxConcurrency` 1: what keeps the order (see the module docs).
    ordered: Option<Ordered>,
}

/// The order keeping of a consumer with `maxConcurrency` 1.
struct Ordered {
    /// Shared with the settle handles of the messages handed out.
    state: Arc<Mutex<OrderState>>,
    /// Messages that arrived after a blocked one, by stream sequence.
    held: std::collections::BTreeMap<u64, Delivery>,
    /// The consumer's ack wait.
    ack_wait: Duration,
}

/// What the settle handles of a `maxConcurrency` 1 consumer tell its subscription. A std
/// mutex, held for a field update, never across an await.
#[derive(Debug, Default)]
struct OrderState {
    /// The message nak'd last, until its redelivery is handed out.
    blocked: Option<Block>,
    /// The stream sequences acknowledged or terminated last (at most [`SETTLED_KEPT`]): a
    /// message the server gives again after it was settled (its ack wait ran out just before
    /// the acknowledgement reached it) is acknowledged again instead of run twice.
    settled: std::collections::VecDeque<u64>,
}

/// How many settled stream sequences an ordered subscription remembers.
const SETTLED_KEPT: usize = 16;

impl OrderState {
    fn settled(&mut self, seq: u64) {
        if self.settled.len() == SETTLED_KEPT {
            self.settled.pop_front();
        }
        self.settled.push_back(seq);
    }
}

/// A nak'd message the ones after it wait for: its stream sequence, and when to stop waiting
/// (its delay plus the ack wait plus a margin: by then the server gave it again unless it is
/// gone, e.g. purged from the stream, and then the held messages go on).
#[derive(Debug, Clone, Copy)]
struct Block {
    seq: u64,
    until: Instant,
}

impl Ordered {
    fn new(ack_wait: Duration) -> Self {
        Self {
            state: Arc::default(),
            held: std::collections::BTreeMap::new(),
            ack_wait,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn blocked(&self) -> Option<Block> {
        self.state().blocked
    }

    /// What to do with a message that arrived: `Some` to hand it out now.
    fn arrived(&mut self, seq: u64, delivery: Delivery) -> Option<Delivery> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.settled.contains(&seq) {
            drop(state);
            let (_, settle) = delivery.into_parts();
            tokio::spawn(async move {
                if let Err(e) = settle.ack().await {
                    tracing::debug!(error = %e, "acknowledging a message given again after it was settled");
                }
            });
            return None;
        }
        match state.blocked {
            Some(b) if seq == b.seq => {
                state.blocked = None;
                Some(delivery)
            }
            Some(b) if seq > b.seq => {
                // Held behind the retry. A held message the server gave again (its ack wait
                // ran out while it waited) keeps the attempt of its first delivery, which is
                // the one it will be processed with, and takes the newer settle handle.
                let delivery = match self.held.remove(&seq) {
                    Some(first) => {
                        let (message, _) = first.into_parts();
                        let (_, settle) = delivery.into_parts();
                        Delivery::new(message, settle)
                    }
                    None => delivery,
                };
                self.held.insert(seq, delivery);
                None
            }
            // Not blocked, or an earlier message came back (its acknowledgement was lost):
            // process it now.
            _ => Some(delivery),
        }
    }

    /// The next held message, once nothing blocks.
    fn release(&mut self) -> Option<Delivery> {
        if self.blocked().is_some() {
            return None;
        }
        self.held.pop_first().map(|(_, d)| d)
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if let Some(delivery) = self.ordered.as_mut().and_then(Ordered::release) {
                return Ok(delivery);
            }
            let give_up = self
                .ordered
                .as_ref()
                .filter(|o| !o.held.is_empty())
                .and_then(Ordered::blocked);
            let (seq, delivery) = match give_up {
                None => self.receive().await?,
                Some(block) => {
                    match tokio::time::timeout_at(block.until.into(), self.receive()).await {
                        Ok(received) => received?,
                        Err(_) => {
                            tracing::warn!(consumer = %self.name, url = %self.url, seq = block.seq, "a message nak'd for a retry did not come back; going on with the ones after it");
                            if let Some(o) = &self.ordered {
                                o.state().blocked = None;
                            }
                            continue;
                        }
                    }
                }
            };
            match self.ordered.as_mut() {
                None => return Ok(delivery),
                Some(ordered) => {
                    if let Some(delivery) = ordered.arrived(seq, delivery) {
                        return Ok(delivery);
                    }
                }
            }
        }
    }
}

impl NatsSubscription {
    /// The next message from the server and its stream sequence.
    async fn receive(&mut self) -> Result<(u64, Delivery), BrokerError> {
        use async_nats::jetstream::consumer::pull::MessagesErrorKind;
        let mut errors = 0;
        loop {
            match self.messages.next().await {
                None => {
                    return Err(BrokerError::Receive(format!(
                        "consumer {} at {}: the message stream ended",
                        self.name, self.url
                    )));
                }
                Some(Ok(message)) => {
                    let (attempt, seq) = match message.info() {
                        Ok(info) => (
                            u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
                            info.stream_sequence,
                        ),
                        Err(_) => (1, 0),
                    };
                    let (message, acker) = message.split();
                    let headers = message
                        .headers
                        .as_ref()
                        .map(|h| {
                            h.iter()
                                .flat_map(|(name, values)| {
                                    let name = name.to_string();
                                    values
                                        .iter()
                                        .map(move |v| (name.clone(), v.as_str().to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let settle = NatsSettle {
                        acker,
                        seq,
                        blocks: self
                            .ordered
                            .as_ref()
                            .map(|o| (Arc::clone(&o.state), o.ack_wait)),
                    };
                    return Ok((
                        seq,
                        Delivery::new(
                            Message {
                                topic: message.subject.to_string(),
                                id: seq.to_string(),
                                headers,
                                body: message.payload,
                                attempt,
                            },
                            Box::new(settle),
                        ),
                    ));
                }
                Some(Err(e)) => {
                    let fatal = matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::PushBasedConsumer
                    );
                    errors += 1;
                    if fatal || errors >= MAX_RECEIVE_ERRORS {
                        return Err(BrokerError::Receive(format!(
                            "consumer {} at {}: {e}",
                            self.name, self.url
                        )));
                    }
                    tracing::warn!(consumer = %self.name, url = %self.url, error = %e, "receiving from NATS; retrying");
                }
            }
        }
    }
}

struct NatsSettle {
    acker: jetstream::message::Acker,
    /// The message's stream sequence.
    seq: u64,
    /// With `maxConcurrency` 1: a nak blocks the messages after this one until it comes back
    /// (and the consumer's ack wait).
    blocks: Option<(Arc<Mutex<OrderState>>, Duration)>,
}

impl NatsSettle {
    /// With `maxConcurrency` 1: remembers that this message is settled, so that a redelivery
    /// of it already on its way is acknowledged rather than run again.
    fn record_settled(&self) {
        if let Some((state, _)) = &self.blocks {
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .settled(self.seq);
        }
    }

    async fn send(&self, kind: AckKind) -> Result<(), BrokerError> {
        self.acker
            .ack_with(kind)
            .await
            .map_err(|e| BrokerError::Settle(format!("settling a NATS message: {e}")))
    }
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.record_settled();
        self.send(AckKind::Ack).await
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        if let Some((blocks, ack_wait)) = &self.blocks {
            // Before the nak leaves: the redelivery can only come after it. Set even when the
            // nak fails (the server then gives the message again after its ack wait).
            blocks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .blocked = Some(Block {
                seq: self.seq,
                until: Instant::now() + delay + *ack_wait + Duration::from_secs(5),
            });
        }
        self.send(AckKind::Nak(Some(delay))).await
    }

    async fn term(self: Box<Self>) -> Result<(), BrokerError> {
        self.record_settled();
        self.send(AckKind::Term).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert_eq!(stream_name("orders"), "KAPPA_ORDERS");
        assert_eq!(stream_name("orders.eu-1.*"), "KAPPA_ORDERS_EU-1__");
        assert_eq!(stream_name("a/b:c>"), "KAPPA_A_B_C_");
    }
}
