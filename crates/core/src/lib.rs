//! The seams between Kappa's data-plane components, with no IO of their own:
//!
//! - [`EndpointIndex`]: the per-function list of specialized instances with their in-flight
//!   counters. The router owns admission on it (a warm request takes a [`Permit`] without asking
//!   anyone); the pool manager inserts, drains and removes endpoints.
//! - [`Provisioner`]: what the router calls on a miss (no free slot) to get capacity.
//! - [`Backend`]: how the pool manager creates, specializes and deletes instances (local
//!   processes, Kubernetes pods).
//! - [`Deployments`]: functions run as one unit the pool manager scales (a Kubernetes
//!   Deployment per `newdeploy` function), whose instances specialize themselves on start.
//! - [`Readiness`]: instances' readiness as a watcher of their pods sees it, which the router's
//!   endpoint index honours alongside the pool manager's feed.
//! - [`InstanceLister`]: the pool manager's list of its instances ([`InstanceInfo`], the wire
//!   format of the executor's `GET /v1/instances`), for `kappa fn pods` and `kappa env pods`.
//! - [`StatsRegistry`]: the bounded in-memory history of how each function was called (per
//!   minute for an hour, and its last invocations) that the router records and the API
//!   server's dashboard reads, through [`StatsSource`].
//! - [`executor_api`]: the executor API's wire format (provision, endpoint feed, usage,
//!   stats, instances), one definition shared by the pool manager's server and its clients.
//! - [`TokenCheck`]: the one constant-time check of the platform's bearer token, which every
//!   listener that requires it uses.
//!
//! This crate deliberately holds no policy: scaling decisions live in the executor, HTTP in the
//! router.

mod addr;
mod auth;
mod backend;
mod deployments;
mod endpoints;
pub mod executor_api;
mod id;
mod instances;
mod outcomes;
mod provision;
mod readiness;
pub mod stats;

pub use addr::{InstanceAddr, ParseAddrError};
pub use auth::{AuthError, BuildGrant, TokenCheck, build_token};
pub use backend::{
    Backend, BackendError, ConfigKind, ConfigVolume, ExitReason, Instance, InstanceEvent,
    InstanceSpec, Limits, SpecializeRequest,
};
pub use deployments::{
    DeploymentEvent, DeploymentSpec, DeploymentStatus, Deployments, ReadyInstance,
};
pub use endpoints::{Endpoint, EndpointIndex, FunctionEndpoints, Permit};
pub use id::FunctionId;
pub use instances::{InstanceInfo, InstanceLister, InstanceState};
pub use outcomes::{FunctionOutcome, Outcome, OutcomeSource, Outcomes};
pub use provision::{Provision, ProvisionError, Provisioner};
pub use readiness::Readiness;
pub use stats::{StatsRegistry, StatsSnapshot, StatsSource};
