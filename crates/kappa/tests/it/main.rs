//! Integration tests of the `kappa` binary against the real API server on a loopback socket.

#![allow(clippy::unwrap_used)]

mod connect;
mod environments;
mod fission;
mod functions;
mod invoke_logs;
mod packages;
mod routes;
mod spec;
mod support;
