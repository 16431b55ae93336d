//! What an observer of instances' health (on Kubernetes: a watch on the function pods) tells
//! whoever admits requests to them (the router's readiness gate).
//!
//! The trait sits here, not in the router or the Kubernetes crate, so that neither depends on
//! the other: `kappa-kube` drives any [`Readiness`], `kappa-router` implements it.

/// Receives instances' readiness as it changes. Calls come from one background watcher, off
/// the request path; implementations must be cheap and must not block on IO.
pub trait Readiness: Send + Sync {
    /// The instance `id` is (`true`) or is not (`false`) ready to serve: not ready covers a
    /// failing readiness probe, a terminated container, a pod being deleted and a pod gone.
    fn set_ready(&self, id: &str, ready: bool);

    /// The instance `id` is gone (its pod was deleted some time ago): stop remembering it.
    /// What was said about it last (not ready) may still hold until its endpoint is removed.
    fn forget(&self, id: &str);
}
