//! The Function finalizer `kappa.dev/instances` ([`FUNCTION_FINALIZER`]) and the controller
//! that honours it ([`FunctionFinalizer`]), run by the executor under the pool manager's lease.
//!
//! Kubernetes keeps a Function that carries the finalizer until the controller removes it, so
//! a deleted Function's instances are cleaned up even when the pool manager never saw the
//! deletion (it was down, or lost the watch). The controller, a kube-runtime `Controller` over
//! Function custom resources in every namespace (the store's scope):
//!
//! - adds the finalizer to a Function that lacks it (JSON patch guarded by a `test` of the
//!   finalizer list it read; `KubeStore` already creates Functions with it, so this covers
//!   `kubectl apply`);
//! - for a Function with a `deletionTimestamp`, deletes what runs it in the function
//!   namespace: the `newdeploy` Deployments and their Secrets (labels `kappa.dev/role=newdeploy`,
//!   `kappa.dev/function`, `kappa.dev/function-namespace`) and every pod labelled with the
//!   function, then removes the finalizer (JSON patch guarded by a `test` of its index).
//!
//! The pool manager still cleans up by itself (level-triggered, it drains before it deletes):
//! to the store a Function being deleted is already deleted, so the pool manager drains its
//! instances as soon as the deletion appears. The controller therefore leaves live pods alone
//! for a drain window (the Function's `functionTimeout` plus [`FinalizerConfig::drain_slack`],
//! counted from the `deletionTimestamp`) and deletes whatever is left after it. Deleting
//! something already gone is success; failures are retried with exponential backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kappa_types::Kind;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::convert::api_resource;
use crate::pods::{LABEL_FUNCTION, LABEL_FUNCTION_NAMESPACE, LABEL_ROLE, ROLE_NEWDEPLOY};

/// The finalizer on every Function: its instances (pods, `newdeploy` Deployments and their
/// Secrets) are deleted before the Function goes.
pub const FUNCTION_FINALIZER: &str = "kappa.dev/instances";

/// `spec.functionTimeout` when a Function does not say (the `kappa-types` default).
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of the finalizer controller.
#[derive(Debug, Clone)]
pub struct FinalizerConfig {
    /// The namespace function pods, Deployments and their Secrets live in.
    pub function_namespace: String,
    /// Added to a Function's `functionTimeout` to give the drain window: live pods are left to
    /// the pool manager (which drains them, then deletes them) for that long after the
    /// `deletionTimestamp`. Longer than the pool manager's own slack, so that normally it
    /// deletes them first.
    pub drain_slack: Duration,
    /// How often a Function whose pods are draining is looked at again.
    pub poll_interval: Duration,
    /// First retry delay after a failure; doubled on each further failure of the same
    /// Function, up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl FinalizerConfig {
    /// Defaults for a function namespace.
    pub fn new(function_namespace: impl Into<String>) -> Self {
        Self {
            function_namespace: function_namespace.into(),
            drain_slack: Duration::from_secs(10),
            poll_interval: Duration::from_secs(2),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Why a reconcile of a Function failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError {
    /// The Function object lacks a field the controller needs.
    #[error("Function object without metadata.{field}: expected every Function to have one")]
    Incomplete {
        /// `name` or `namespace`.
        field: &'static str,
    },
    /// A Kubernetes request failed.
    #[error("{step} for Function {namespace}/{name}")]
    Api {
        /// What was being done ("deleting pod kappa-functions/abc").
        step: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The JSON patch could not be built (a bug: the patch is a fixed shape).
    #[error("building the finalizer patch for Function {namespace}/{name}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What one reconcile of a Function did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizerOutcome {
    /// Nothing to do: it carries the finalizer and is not being deleted, or it is being
    /// deleted without it (not ours to hold).
    Unchanged,
    /// The finalizer was added.
    Added,
    /// Being deleted, but `pods` live pods are still within the drain window, which ends in
    /// `remaining`; looked at again later.
    Draining { pods: usize, remaining: Duration },
    /// Its instances were deleted and the finalizer removed.
    Finalized,
}

/// The controller. Cheap to clone.
#[derive(Clone)]
pub struct FunctionFinalizer {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: FinalizerConfig,
    /// Consecutive failures per Function (namespace, name), for the retry backoff. A std
    /// mutex: held for a map update only, never across an `.await`; an entry goes at the
    /// Function's next success, so the map is bounded by the Functions failing right now.
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl std::fmt::Debug for FunctionFinalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionFinalizer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// `key=value,...` of the labels.
fn selector(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl FunctionFinalizer {
    /// A controller on this client.
    pub fn new(client: Client, config: FinalizerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                failures: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Watches Functions in every namespace and reconciles each (one at a time per Function)
    /// until `shutdown`; reconciles in progress then finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let ar = api_resource(Kind::Function);
        let functions = Api::<DynamicObject>::all_with(self.inner.client.clone(), &ar);
        tracing::info!(
            function_namespace = %self.inner.config.function_namespace,
            finalizer = FUNCTION_FINALIZER,
            "function finalizer controller starting"
        );
        Controller::new_with(functions, watcher::Config::default(), ar)
            .graceful_shutdown_on(async move { shutdown.cancelled_owned().await })
            .run(
                |function, this: Arc<FunctionFinalizer>| async move {
                    this.reconcile_and_schedule(&function).await
                },
                |function, error, this: Arc<FunctionFinalizer>| this.retry(&function, error),
                Arc::new(self),
            )
            .for_each(|result| async move {
                match result {
                    Ok(_) => {}
                    // Logged with its backoff by `retry`.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(controller::Error::ObjectNotFound(object)) => {
                        tracing::debug!(function = %object, "function gone before its reconcile");
                    }
                    Err(e) => tracing::warn!(error = %e, "function finalizer controller"),
                }
            })
            .await;
        tracing::info!("function finalizer controller stopped");
    }

    async fn reconcile_and_schedule(
        &self,
        function: &DynamicObject,
    ) -> Result<Action, FinalizerError> {
        let outcome = self.reconcile(function).await?;
        if let (Some(namespace), Some(name)) = (
            function.metadata.namespace.clone(),
            function.metadata.name.clone(),
        ) {
            self.inner
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(namespace, name));
        }
        Ok(match outcome {
            FinalizerOutcome::Draining { remaining, .. } => {
                Action::requeue(remaining.min(self.inner.config.poll_interval))
            }
            FinalizerOutcome::Unchanged | FinalizerOutcome::Added | FinalizerOutcome::Finalized => {
                Action::await_change()
            }
        })
    }

    /// The controller's error policy: exponential backoff per Function.
    fn retry(&self, function: &DynamicObject, error: &FinalizerError) -> Action {
        let key = (
            function.metadata.namespace.clone().unwrap_or_default(),
            function.metadata.name.clone().unwrap_or_default(),
        );
        let failures = {
            let mut map = self
                .inner
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let config = &self.inner.config;
        let delay = config
            .retry_base
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(config.retry_max);
        tracing::warn!(
            function = %format!("{}/{}", key.0, key.1),
            error = %error_chain(error),
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "function finalizer failed; retrying"
        );
        Action::requeue(delay)
    }

    /// One reconcile of a Function (what the controller runs for each change; public so tests
    /// drive it directly).
    pub async fn reconcile(
        &self,
        function: &DynamicObject,
    ) -> Result<FinalizerOutcome, FinalizerError> {
        let namespace = function
            .metadata
            .namespace
            .as_deref()
            .ok_or(FinalizerError::Incomplete { field: "namespace" })?;
        let name = function
            .metadata
            .name
            .as_deref()
            .ok_or(FinalizerError::Incomplete { field: "name" })?;
        let finalizers = function.metadata.finalizers.clone().unwrap_or_default();
        let ours = finalizers.iter().position(|f| f == FUNCTION_FINALIZER);
        match (&function.metadata.deletion_timestamp, ours) {
            (None, Some(_)) | (Some(_), None) => Ok(FinalizerOutcome::Unchanged),
            (None, None) => {
                self.add_finalizer(namespace, name, &finalizers).await?;
                tracing::debug!(function = %format!("{namespace}/{name}"), "finalizer added");
                Ok(FinalizerOutcome::Added)
            }
            (Some(since), Some(index)) => {
                let window = function_timeout(function) + self.inner.config.drain_slack;
                // Judged on the local clock against the API server's timestamp: skew only
                // lengthens or shortens the window (a timestamp in the future counts as now).
                let elapsed_ms = Timestamp::now().as_millisecond() - since.0.as_millisecond();
                let elapsed = Duration::from_millis(u64::try_from(elapsed_ms).unwrap_or(0));
                let remaining = window.saturating_sub(elapsed);
                if let Some(pods) = self.delete_instances(namespace, name, remaining).await? {
                    tracing::debug!(
                        function = %format!("{namespace}/{name}"),
                        pods,
                        remaining_s = remaining.as_secs(),
                        "function being deleted: waiting for the pool manager to drain its pods"
                    );
                    return Ok(FinalizerOutcome::Draining { pods, remaining });
                }
                self.remove_finalizer(namespace, name, index).await?;
                tracing::info!(
                    function = %format!("{namespace}/{name}"),
                    "function's instances deleted; finalizer removed"
                );
                Ok(FinalizerOutcome::Finalized)
            }
        }
    }

    fn functions(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.inner.client.clone(),
            namespace,
            &api_resource(Kind::Function),
        )
    }

    async fn patch(
        &self,
        namespace: &str,
        name: &str,
        step: &str,
        operations: Value,
    ) -> Result<(), FinalizerError> {
        let patch = serde_json::from_value(operations).map_err(|source| FinalizerError::Patch {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
        match self
            .functions(namespace)
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone already: nothing is left to hold.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(FinalizerError::Api {
                step: step.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Adds the finalizer, failing (and retrying later) if the finalizers changed since read:
    /// Kubernetes does not de-duplicate finalizers.
    async fn add_finalizer(
        &self,
        namespace: &str,
        name: &str,
        finalizers: &[String],
    ) -> Result<(), FinalizerError> {
        let operations = if finalizers.is_empty() {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FUNCTION_FINALIZER]},
            ])
        } else {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FUNCTION_FINALIZER},
            ])
        };
        self.patch(namespace, name, "adding the finalizer", operations)
            .await
    }

    /// Removes the finalizer at `index`, testing first that it is still there (another
    /// controller may have removed one before it meanwhile).
    async fn remove_finalizer(
        &self,
        namespace: &str,
        name: &str,
        index: usize,
    ) -> Result<(), FinalizerError> {
        let path = format!("/metadata/finalizers/{index}");
        let operations = json!([
            {"op": "test", "path": path, "value": FUNCTION_FINALIZER},
            {"op": "remove", "path": path},
        ]);
        self.patch(namespace, name, "removing the finalizer", operations)
            .await
    }

    /// Deletes the function's Deployments, pods and Secrets in the function namespace;
    /// `Some(live pods)` instead while live pods are within the drain window (`remaining`).
    async fn delete_instances(
        &self,
        namespace: &str,
        name: &str,
        remaining: Duration,
    ) -> Result<Option<usize>, FinalizerError> {
        let function_labels = [
            (LABEL_FUNCTION, name),
            (LABEL_FUNCTION_NAMESPACE, namespace),
        ];
        let newdeploy_labels = [
            (LABEL_ROLE, ROLE_NEWDEPLOY),
            (LABEL_FUNCTION, name),
            (LABEL_FUNCTION_NAMESPACE, namespace),
        ];
        let pods = self
            .live(
                &self.objects::<Pod>(),
                &selector(&function_labels),
                namespace,
                name,
            )
            .await?;
        if !pods.is_empty() && !remaining.is_zero() {
            return Ok(Some(pods.len()));
        }
        // Deployments first, so their ReplicaSets do not replace the pods deleted next.
        let deployments = self.objects::<Deployment>();
        for deployment in self
            .live(&deployments, &selector(&newdeploy_labels), namespace, name)
            .await?
        {
            self.delete(
                &deployments,
                &deployment,
                DeleteParams::background(),
                namespace,
                name,
            )
            .await?;
        }
        let pod_api = self.objects::<Pod>();
        for pod in pods {
            self.delete(&pod_api, &pod, DeleteParams::default(), namespace, name)
                .await?;
        }
        let secrets = self.objects::<Secret>();
        for secret in self
            .live(&secrets, &selector(&newdeploy_labels), namespace, name)
            .await?
        {
            self.delete(&secrets, &secret, DeleteParams::default(), namespace, name)
                .await?;
        }
        Ok(None)
    }

    fn objects<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(
            self.inner.client.clone(),
            &self.inner.config.function_namespace,
        )
    }

    /// Names of the objects with these labels that are not being deleted already (metadata
    /// only: a Secret's values are never read).
    async fn live<K>(
        &self,
        api: &Api<K>,
        labels: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<String>, FinalizerError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let list = api
            .list_metadata(&ListParams::default().labels(labels))
            .await
            .map_err(|source| FinalizerError::Api {
                step: format!(
                    "listing {} in {} labelled {labels}",
                    K::plural(&Default::default()),
                    self.inner.config.function_namespace
                ),
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .filter_map(|o| o.metadata.name)
            .collect())
    }

    async fn delete<K>(
        &self,
        api: &Api<K>,
        object: &str,
        params: DeleteParams,
        namespace: &str,
        name: &str,
    ) -> Result<(), FinalizerError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        match api.delete(object, &params).await {
            Ok(_) => {
                tracing::info!(
                    function = %format!("{namespace}/{name}"),
                    kind,
                    object,
                    "deleted for the function's finalizer"
                );
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(FinalizerError::Api {
                step: format!(
                    "deleting {kind} {}/{object}",
                    self.inner.config.function_namespace
                ),
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// The Function's `spec.functionTimeout` (the pool manager drains for that long).
fn function_timeout(function: &DynamicObject) -> Duration {
    function
        .data
        .get("spec")
        .and_then(|spec| spec.get("functionTimeout"))
        .and_then(Value::as_u64)
        .map_or(DEFAULT_FUNCTION_TIMEOUT, Duration::from_secs)
}

/// The error and its causes, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
