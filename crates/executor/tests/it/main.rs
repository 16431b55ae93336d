//! Pool manager component tests: a real `MemoryStore`, a fake backend that records calls, and
//! paused time for reaping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adaptive;
mod config;
mod deployments;
mod fake;
mod newdeploy;
mod pool;
