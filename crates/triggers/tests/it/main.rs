//! Component tests of kappa-triggers: the dispatcher against a fake broker and the real ones
//! (a `nats-server -js` and a `redis-server` per test, on free loopback ports), the Redis
//! takeover of stuck entries, the trigger manager (status, reconnection, time triggers), and
//! the workers' metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod manager;
mod metrics;
mod redis_claim;
mod support;
