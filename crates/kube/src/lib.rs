//! Kappa on Kubernetes. This crate owns everything that talks to a Kubernetes API server, so
//! `kube` and `k8s-openapi` stay out of every other crate:
//!
//! - [`crd`]: the CustomResourceDefinitions of Kappa's kinds (group `kappa.dev`, version `v1`),
//!   derived from the `kappa-types` specs, and the YAML the `kappa-crdgen` binary writes into
//!   `charts/kappa/crds/`.
//! - [`KubeStore`]: the store trait on the Kubernetes API (custom resources, plus native
//!   Secrets and ConfigMaps), with resource versions and conflicts mapped to the store's.
//! - [`PodBackend`]: the pool manager's backend on bare pods (runtime container + fetcher),
//!   labelled so a restarted pool manager adopts them; [`pods`] builds the pod objects.
//! - [`KubeDeployments`] ([`deployments`]): `newdeploy` functions as a Deployment per function
//!   whose pods specialize themselves on start from a Secret; the pool manager sets replicas.
//!   The pods' second container, `kappa fetcher`, is its own crate (`kappa-fetcher`, no
//!   Kubernetes API use); what the pod backend sends it is `kappa_runtime::fetch`.
//! - [`builds`]: the builder role's runner on Kubernetes ([`builds::PodBuildRunner`]): one
//!   builder pod per build, which fetches the source and uploads the deployment archive through
//!   the API with a build token, and the `kappa build-step` steps those pods run.
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`readiness`]: the router's watch on the function pods' readiness, which keeps endpoints
//!   of pods that are not ready out of its index (through `kappa_core::Readiness`).
//! - [`finalizer`]: the Function finalizer `kappa.dev/instances` and the controller (run by the
//!   executor) that deletes a deleted Function's pods, Deployments and Secrets before
//!   removing it.
//!
//! It deliberately holds no platform policy: what to store comes from the API server, when to
//! create or delete an instance from the pool manager (`kappa-executor`), who leads from the
//! lease alone.
//!
//! Invariants: a warm request never calls the Kubernetes API (the router only watches, in the
//! background); every write to the API carries the precondition it was read with; a pod this
//! crate creates always carries the labels adoption needs.

mod backend;
pub mod builds;
pub mod convert;
pub mod crd;
pub mod deployments;
pub mod finalizer;
pub mod lease;
pub mod pods;
pub mod readiness;
mod store;

pub use backend::{PodBackend, PodBackendConfig, PodState, exit_reason, pod_state};
pub use deployments::{DeploymentsConfig, KubeDeployments};
pub use finalizer::{
    FUNCTION_FINALIZER, FinalizerConfig, FinalizerError, FinalizerOutcome, FunctionFinalizer,
};
pub use lease::{LeaseConfig, LeaseError, LeaseLock, LeaseState, elect};
pub use readiness::{PodReadinessConfig, PodReadinessWatcher};
pub use store::KubeStore;

/// The Kubernetes client type (re-exported so callers need no `kube` dependency).
pub use kube::Client;

/// A client from the in-cluster configuration (service account), or `KUBECONFIG` /
/// `~/.kube/config` outside a cluster.
pub async fn default_client() -> Result<Client, kube::Error> {
    Client::try_default().await
}

/// The namespace this process runs in: `KAPPA_POD_NAMESPACE` (the chart sets it from the
/// downward API) or `POD_NAMESPACE`, else the service account's namespace file, else `default`.
pub fn current_namespace() -> String {
    for var in ["KAPPA_POD_NAMESPACE", "POD_NAMESPACE"] {
        if let Ok(ns) = std::env::var(var)
            && !ns.trim().is_empty()
        {
            return ns.trim().to_string();
        }
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}
