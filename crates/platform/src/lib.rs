//! The one assembly of the Kappa platform.
//!
//! [`Platform::build`] takes a typed [`Config`] and the [`Role`]s a process runs (api, router,
//! executor, triggers, builder) and wires the store, archive and log stores, instance backend,
//! pool manager, router, API server, trigger workers and package builder together, binding
//! each role's listeners. `kappa up` is a preset (every role, the embedded store, the built-in
//! runtimes installed, the bundled example deployed; see [`local`]); `kappa server --role ...`
//! builds the [`Config`] from its flags. Nothing else in the workspace wires these parts.
//!
//! Across processes the roles talk over HTTP: a router with `executor_url` asks the executor's
//! API for capacity and mirrors its endpoints (`kappa_router::remote`); the API and trigger
//! roles invoke through the router's internal listener (`router_admin_url`) when no router runs
//! in the process. Several roles in one process share the store handle, which the embedded
//! (redb) store needs, since only one process can open its file.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod assemble;
mod cluster;
mod config;
mod error;
mod executor;
mod invoke;
pub mod local;

pub use assemble::{Isolation, Platform};
pub use config::{BackendKind, BuildRunnerKind, Config, Listen, Role, RouterUrl, StoreConfig};
pub use error::PlatformError;
