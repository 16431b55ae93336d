//! Event triggers: message-queue triggers (NATS JetStream, Redis Streams, Kafka) and time triggers
//! (cron), which invoke functions through the router.
//!
//! Owns:
//! - the [`Broker`] seam (consume with explicit settle operations — ack, nak with a delay,
//!   term — and publish), with [`nats::NatsBroker`], [`redis::RedisBroker`] and
//!   [`kafka::KafkaBroker`];
//! - the broker-independent [`Dispatcher`] (at-least-once delivery: a message is acknowledged
//!   only after a 2xx and the publish of the response, or after the error topic took it;
//!   retries with exponential backoff and jitter; bounded parallelism per trigger);
//! - the time trigger worker, which fires once per scheduled time (`kappa_types::Schedule`),
//!   also across restarts;
//! - the [`TriggerManager`], which runs one worker per trigger in the store and reports each
//!   trigger's state in its status;
//! - the [`TriggerMetrics`] (messages by result, processing time, time-trigger fires,
//!   consumers), registered in the caller's Prometheus registry.
//!
//! Deliberately not here: validation of the trigger resources (`kappa-types`, plus the full cron
//! parse at admission in `kappa-api` with `kappa_types::Schedule`), the invocation itself
//! (the router, behind [`Invoke`]), and leader election between several platform replicas
//! (one process runs the triggers locally).

pub mod broker;
pub mod dispatch;
pub mod invocations;
pub mod kafka;
pub mod manager;
pub mod metrics;
pub mod nats;
pub mod redis;
pub mod status;
mod timer;

pub use broker::{
    Broker, BrokerError, Connector, ConsumerSpec, DefaultConnector, Delivery, Header, Message,
    Settle, Subscription,
};
pub use dispatch::{Backoff, DispatchConfig, Dispatcher, Invoke, Target};
pub use invocations::{AsyncConfig, AsyncWorker};
pub use manager::{
    DEFAULT_KAFKA_URL, DEFAULT_NATS_URL, DEFAULT_REDIS_URL, ManagerConfig, TriggerManager,
    consumer_spec, durable_name,
};
pub use metrics::TriggerMetrics;
pub use status::{ERROR, PENDING, READY};
