//! The seam between the dispatcher and a message broker: [`Broker`] (consume, publish, forget a
//! consumer) and [`Delivery`] (one message with its explicit settle operations).
//!
//! A broker implementation owns its wire protocol, its durable consumer state and how a
//! negative acknowledgement turns into a redelivery; it knows nothing of functions, retries or
//! error topics, which are the dispatcher's.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Why a broker operation failed. The message names the broker, the URL or topic and the step.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or the connection broke.
    #[error("{0}")]
    Connect(String),
    /// Preparing the durable consumer (stream, consumer, group) failed.
    #[error("{0}")]
    Setup(String),
    /// Receiving messages failed; the subscription is unusable and must be opened again.
    #[error("{0}")]
    Receive(String),
    /// Publishing a message failed (it may or may not have been stored).
    #[error("{0}")]
    Publish(String),
    /// Acknowledging, rejecting or scheduling the redelivery of a message failed; the broker
    /// will redeliver it.
    #[error("{0}")]
    Settle(String),
    /// The trigger's settings are not usable with this broker (e.g. an unknown `metadata` key).
    #[error("{0}")]
    Config(String),
}

/// A message header, in the order the broker gave it.
pub type Header = (String, String);

/// What to consume, derived from a MessageQueueTrigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// `kappa-<namespace>-<trigger>`: the durable consumer (NATS) or consumer group (Redis,
    /// Kafka).
    pub durable_name: String,
    /// The subject (NATS), stream key (Redis) or topic (Kafka).
    pub topic: String,
    /// Most messages delivered and not yet settled at once (a message waiting for its
    /// redelivery after a nak counts too). 1 keeps the order.
    pub max_in_flight: u32,
    /// How long an unsettled message stays with this consumer before the broker gives it to
    /// another one (or to this one again): the function timeout plus a margin.
    pub ack_wait: Duration,
    /// Broker-specific settings from `spec.metadata` (`stream`, `consumer`, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject or stream key it was received on.
    pub topic: String,
    /// Its id on the broker (JetStream stream sequence, Redis entry id, Kafka
    /// `<partition>:<offset>`).
    pub id: String,
    /// Its headers.
    pub headers: Vec<Header>,
    /// Its payload.
    pub body: Bytes,
    /// 1 for the first delivery, counted by the broker.
    pub attempt: u32,
}

/// The settle operations of one delivered message. Each consumes the handle: a message is
/// settled once.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The message is done: the broker must not deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// The message failed: deliver it again (with the attempt count raised) after `delay`.
    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), BrokerError>;
    /// The message failed for good: never deliver it again.
    async fn term(self: Box<Self>) -> Result<(), BrokerError>;
}

/// A message and the handle that settles it.
pub struct Delivery {
    /// The message.
    pub message: Message,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled through `settle`.
    pub fn new(message: Message, settle: Box<dyn Settle>) -> Self {
        Self { message, settle }
    }

    /// Splits the message from its settle handle.
    pub fn into_parts(self) -> (Message, Box<dyn Settle>) {
        (self.message, self.settle)
    }
}

/// An open consumer: a stream of deliveries.
#[async_trait]
pub trait Subscription: Send {
    /// The next message, waiting for one. An error means the subscription is broken and has to
    /// be opened again; transient trouble the implementation recovers from is only logged.
    async fn next(&mut self) -> Result<Delivery, BrokerError>;
}

/// A connection to a message broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Prepares the durable consumer `spec` names (creating what it needs on the broker, keeping
    /// its position when it exists) and starts receiving.
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BrokerError>;

    /// Publishes a message to `topic` and returns once the broker took it (stored it, when the
    /// broker stores the topic). A topic no stream stores (a plain NATS subject) is only
    /// written to the connection, ahead of anything sent on it later; [`Broker::flush`] waits
    /// until the server has it.
    async fn publish(
        &self,
        topic: &str,
        headers: &[Header],
        body: Bytes,
    ) -> Result<(), BrokerError>;

    /// Returns once the broker has everything published so far on this connection. Needed
    /// before recording elsewhere (such as in the store) that a message was published.
    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Removes the durable consumer `spec` names (its trigger was deleted). Absent is fine.
    async fn remove(&self, spec: &ConsumerSpec) -> Result<(), BrokerError>;
}

/// Opens broker connections by type (`nats-jetstream`, `redis`, `kafka`) and URL.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Connects to the broker of `mq_type` at `url`.
    async fn connect(
        &self,
        mq_type: &str,
        url: &str,
    ) -> Result<std::sync::Arc<dyn Broker>, BrokerError>;
}

/// The real brokers: NATS JetStream, Redis Streams and Kafka.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultConnector;

#[async_trait]
impl Connector for DefaultConnector {
    async fn connect(
        &self,
        mq_type: &str,
        url: &str,
    ) -> Result<std::sync::Arc<dyn Broker>, BrokerError> {
        match mq_type {
            "nats-jetstream" => Ok(std::sync::Arc::new(
                crate::nats::NatsBroker::connect(url).await?,
            )),
            "redis" => Ok(std::sync::Arc::new(
                crate::redis::RedisBroker::connect(url).await?,
            )),
            "kafka" => Ok(std::sync::Arc::new(
                crate::kafka::KafkaBroker::connect(url).await?,
            )),
            other => Err(BrokerError::Config(format!(
                "message queue type {other:?} is not supported: expected one of {}",
                kappa_types::MESSAGE_QUEUE_TYPES.join(", ")
            ))),
        }
    }
}
