//! The API server's integration tests: one binary, one module per area.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod archives;
mod batch;
mod config;
mod dashboard;
mod invoke;
mod protocol;
mod resources;
mod streams;
mod support;
