//! Functions run as one scalable unit rather than as instances created one by one.
//!
//! On Kubernetes a `newdeploy` function is a Deployment: its pods specialize themselves on start
//! (the fetcher reads the [`SpecializeRequest`] it was given) and report Ready once the code is
//! loaded. The pool manager stays the scaling authority: it sets the replica count from the
//! in-flight demand it sees in the endpoint index, and indexes the ready instances this seam
//! reports. Kubernetes heals and rolls the pods.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::backend::{BackendError, Instance, InstanceSpec, SpecializeRequest};
use crate::id::FunctionId;

/// What a function's deployment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSpec {
    pub function: FunctionId,
    /// The function generation its instances load.
    pub generation: i64,
    /// Names everything the instances were built from (function and environment generation,
    /// the versions of the Secrets and ConfigMaps). A new revision replaces every instance;
    /// ready instances report the revision they run.
    pub revision: String,
    /// The shape of one instance (environment, image, limits, variables). Its `id` is unused.
    pub instance: InstanceSpec,
    /// What each instance loads on start.
    pub specialize: SpecializeRequest,
    /// How many instances to run.
    pub replicas: u32,
    /// How long an instance is given to finish its requests when it is stopped.
    pub grace: Duration,
}

/// An instance of a deployment that is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInstance {
    pub function: FunctionId,
    pub instance: Instance,
    /// The function generation it loaded.
    pub generation: i64,
    /// [`DeploymentSpec::revision`] of the spec it runs.
    pub revision: String,
}

/// What happened to a deployment's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentEvent {
    /// An instance became ready (loaded its code and passes its readiness check).
    Ready(ReadyInstance),
    /// An instance stopped being ready, or is gone.
    Gone { function: FunctionId, id: String },
    /// An instance could not load the code of `revision` (refused, or could not be placed).
    Failed {
        function: FunctionId,
        revision: String,
        message: String,
        detail: Option<String>,
    },
}

/// A deployment as it exists now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    pub function: FunctionId,
    pub revision: String,
    /// The replica count it is set to.
    pub replicas: u32,
}

/// Runs functions as deployments (Kubernetes: a Deployment per function).
#[async_trait]
pub trait Deployments: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Creates the function's deployment, or updates it to `spec`: a new revision replaces its
    /// instances (a rolling update), and the replica count becomes `spec.replicas`.
    async fn apply(&self, spec: &DeploymentSpec) -> Result<(), BackendError>;

    /// Sets the replica count. Scaling down removes the instances named in `remove_first`
    /// (drained by the caller) before any other.
    async fn scale(
        &self,
        function: &FunctionId,
        replicas: u32,
        remove_first: &[String],
    ) -> Result<(), BackendError>;

    /// Removes the deployment and its instances. Removing one that does not exist succeeds.
    async fn delete(&self, function: &FunctionId) -> Result<(), BackendError>;

    /// The deployments that exist.
    async fn list(&self) -> Result<Vec<DeploymentStatus>, BackendError>;

    /// The instances that are ready now, across deployments.
    async fn ready(&self) -> Result<Vec<ReadyInstance>, BackendError>;

    /// Instance events from now on.
    fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent>;
}
