//! The router's component tests: one binary, real loopback sockets, an in-memory store and a
//! provisioner that starts real tiny HTTP upstreams.

#![allow(clippy::unwrap_used)]

mod admin;
mod admission;
mod errorhead;
mod failures;
mod front;
mod lean;
mod readiness;
mod remote;
mod routing;
mod streaming;
mod support;
mod threads;
