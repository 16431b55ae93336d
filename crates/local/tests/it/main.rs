//! Integration tests of the local backend against the real Python runtime, the built-in sandbox
//! (its helper is this crate's `kappa-sandbox` binary) and cgroups (as root: the sandbox needs
//! it, and a test of cgroup limits whose controller is missing says so and skips).

mod config;
mod conformance;
mod lifecycle;
mod limits;
mod orphans;
mod prepare;
mod sandbox;
mod spare;
mod support;
mod waiter;
