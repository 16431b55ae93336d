//! Component tests of kappa-triggers: the dispatcher against a fake broker and the real ones
//! (a `nats-server -js`, a `redis-server` and a `tansu` Kafka broker per test, on free loopback
//! ports), the Redis takeover of stuck entries, Kafka's partitions and group offsets, the
//! trigger manager (status, reconnection, time triggers), and the workers' metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod kafka;
mod manager;
mod metrics;
mod nats_order;
mod redis_claim;
mod support;
