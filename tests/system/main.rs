//! System tests: start the real `kappa up` on free loopback ports, deploy through the real CLI,
//! invoke over HTTP, as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds;
mod chaos;
mod config;
mod errors;
mod examples;
mod harness;
mod isolation;
mod observability;
mod restart;
mod roles;
mod runtimes;
mod spec;
mod traffic;
mod triggers;
mod versions;
