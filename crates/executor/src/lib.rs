//! The pool manager (executor): turns "a request for function F found no free slot" into a
//! specialized instance in the router's endpoint index.
//!
//! It owns, per Environment, a pool of `poolsize` warm generic instances, and per Function the
//! specialized instances it made. On a miss ([`kappa_core::Provisioner::provision`]) it takes a
//! warm instance (or starts one when the pool is empty), places the code and calls the
//! runtime's specialize endpoint through the [`kappa_core::Backend`], then inserts the endpoint
//! into the index; the pool is replenished in the background. A reconcile loop keeps pools at
//! size, rolls instances of changed environments and functions (draining first), reaps idle
//! instances after `idletimeout` down to `minScale`, and keeps `minScale` instances ready.
//!
//! When a [`kappa_core::Deployments`] seam is set (Kubernetes), `newdeploy` functions run as
//! one deployment each instead: the pool manager keeps their replica count (raised on a miss,
//! lowered by a named idle instance, never outside `minScale..=maxScale`), applies a new
//! revision on every change of the function, its environment or its Secrets and ConfigMaps,
//! and indexes the ready instances the seam reports (`manager/deployed.rs`).
//!
//! Invariants:
//! - The executor is never on the warm path: it is called only on a miss.
//! - Instances of a function (ready plus being specialized) never exceed its `concurrency`
//!   (`maxScale` for `newdeploy`); concurrent misses share an in-progress specialization's
//!   `requestsPerPod` slots instead of each starting one (no instance storms).
//! - An instance is deleted only after it was marked draining and its in-flight count reached
//!   zero (or its drain deadline passed).
//! - State is in memory; locally, instances do not survive a platform restart (the local backend
//!   kills orphans of a previous run on start) and pools are rebuilt from the store.
//!
//! [`http`] exposes it over HTTP to routers in other processes (cluster mode).
//!
//! It deliberately knows nothing of HTTP routing or of how instances run.

mod cache;
mod canary;
pub mod http;
mod manager;
mod metrics;
pub mod stats;

pub use canary::CanaryController;
pub use http::ExecutorApi;
pub use manager::{AdaptiveConfig, ExecutorConfig, PoolManager};
