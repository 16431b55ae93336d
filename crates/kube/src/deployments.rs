//! [`KubeDeployments`]: the [`Deployments`] seam on Kubernetes, a Deployment per `newdeploy`
//! function (see `docs/design/001-pool-pods.md`).
//!
//! - `apply` writes the function's Secret (the fetcher's [`FetchRequest`] as JSON: it carries
//!   Secret values and the API token) and its Deployment, whose pods specialize themselves on
//!   start from that Secret ([`newdeploy_pod_template`]). Both are created, or replaced with
//!   the `resourceVersion` they were read with (a 409 re-reads and retries, a bounded number of
//!   times). The pod template carries the request's sha256, so a new request rolls the pods
//!   (`RollingUpdate`, `maxUnavailable: 0`, `maxSurge: 1`).
//! - `scale` annotates the pods to remove with `controller.kubernetes.io/pod-deletion-cost`
//!   (the ReplicaSet removes the cheapest first), then merge-patches `spec.replicas`.
//! - `delete` removes the Deployment (background propagation) and the Secret.
//! - `list` reads the Deployments, `ready` the Ready pods (the instance id is the pod name).
//! - [`KubeDeployments::watch`] turns pod changes into [`DeploymentEvent`]s: Ready, Gone (no
//!   longer Ready, terminating or deleted) and Failed (the fetcher exited non-zero: its
//!   termination message; or a container that cannot start, such as an image pull failure).
//!
//! The pool manager decides the replica count; Kubernetes only heals and rolls the pods.
//! The Secret is replaced in place on a new revision: pods of the previous revision keep the
//! code they loaded (their fetcher reads the request only on start, and one that restarts finds
//! its runtime specialized already and keeps it) until the rollout replaces them.
//! Invariant: everything here carries `app.kubernetes.io/managed-by: kappa` and
//! `kappa.dev/role: newdeploy`, and an object of the same name without them is never
//! overwritten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kappa_core::{
    BackendError, DeploymentEvent, DeploymentSpec, DeploymentStatus, Deployments, FunctionId,
    Instance, ReadyInstance,
};
use kappa_store::Store;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    PodBackendConfig, PodState, api_status, environment_placement, fetch_request, follow_pods,
    pod_state,
};
use crate::pods::{
    ANNOTATION_CREATED_BY, LABEL_FUNCTION, LABEL_FUNCTION_NAMESPACE, LABEL_GENERATION,
    LABEL_MANAGED_BY, LABEL_REVISION, LABEL_ROLE, Placement, PodTemplate, ROLE_NEWDEPLOY,
    SPECIALIZE_KEY, newdeploy_labels, newdeploy_pod_template, newdeploy_selector,
};
use kappa_runtime::{FetchRequest, RUNTIME_PORT};

/// The annotation the ReplicaSet controller reads to choose which pods to remove first.
pub const ANNOTATION_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The deletion cost of a pod named to go first (lower than any other pod's, which is 0).
pub const REMOVE_FIRST_COST: &str = "-1000000";
/// How many times a write that conflicts (409) is re-read and retried.
const CONFLICT_RETRIES: usize = 5;
/// How much of a function's name goes into its Deployment's name.
const NAME_PART_MAX: usize = 40;

/// Configuration of [`KubeDeployments`].
#[derive(Debug, Clone)]
pub struct DeploymentsConfig {
    /// Shared shape of the pods; `namespace` is where the Deployments and Secrets go.
    pub template: PodTemplate,
    /// The API server's base URL as the fetchers reach it (archive downloads).
    pub api_url: String,
    /// Bearer token the fetchers send with the download (the API token).
    pub api_token: Option<String>,
}

impl From<&PodBackendConfig> for DeploymentsConfig {
    fn from(config: &PodBackendConfig) -> Self {
        Self {
            template: config.template.clone(),
            api_url: config.api_url.clone(),
            api_token: config.api_token.clone(),
        }
    }
}

/// The name of `function`'s Deployment and Secret: `fn-<name, cut to 40>-<first 8 hex digits
/// of sha256("<namespace>/<name>")>`, a stable DNS label distinct per function.
pub fn deployment_name(function: &FunctionId) -> String {
    let digest = Sha256::digest(format!("{}/{}", function.namespace, function.name).as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let part: String = function
        .name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .take(NAME_PART_MAX)
        .collect();
    let part = part.trim_matches('-');
    if part.is_empty() {
        format!("fn-{hash}")
    } else {
        format!("fn-{part}-{hash}")
    }
}

/// The specialization request of `spec` as the fetcher reads it (JSON), and its sha256.
pub fn specialize_request(config: &DeploymentsConfig, spec: &DeploymentSpec) -> (Vec<u8>, String) {
    let request: FetchRequest = fetch_request(
        &config.api_url,
        config.api_token.as_deref(),
        &spec.specialize,
    );
    // A FetchRequest is strings and maps of strings: serialising it cannot fail.
    let json = serde_json::to_vec(&request).unwrap_or_default();
    let sha = Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (json, sha)
}

/// The Secret holding `spec`'s specialization request (`request_json`) under
/// [`SPECIALIZE_KEY`], named `name`.
pub fn specialize_secret(
    template: &PodTemplate,
    spec: &DeploymentSpec,
    name: &str,
    request_json: &[u8],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(template.namespace.clone()),
            labels: Some(newdeploy_labels(spec)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_CREATED_BY.to_string(),
                template.created_by.clone(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SPECIALIZE_KEY.to_string(),
            ByteString(request_json.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The Deployment of `spec`, named `name`, whose pods specialize from the Secret of the same
/// name (request sha256 `request_sha256`).
pub fn function_deployment(
    template: &PodTemplate,
    spec: &DeploymentSpec,
    placement: &Placement,
    name: &str,
    request_sha256: &str,
) -> Deployment {
    let pod_template = newdeploy_pod_template(template, spec, placement, name, request_sha256);
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": template.namespace,
            "labels": newdeploy_labels(spec),
            "annotations": { ANNOTATION_CREATED_BY: template.created_by },
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": { "matchLabels": newdeploy_selector(&spec.function) },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 },
            },
            "revisionHistoryLimit": 2,
            "template": pod_template,
        },
    });
    // Every value above is a valid Deployment field; a failure here is a bug caught by the
    // tests.
    serde_json::from_value(object).unwrap_or_default()
}

/// `app.kubernetes.io/managed-by=kappa,kappa.dev/role=newdeploy`
fn selector() -> String {
    format!("{LABEL_MANAGED_BY}=kappa,{LABEL_ROLE}={ROLE_NEWDEPLOY}")
}

fn managed(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().is_some_and(|l| {
        l.get(LABEL_MANAGED_BY).map(String::as_str) == Some("kappa")
            && l.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_NEWDEPLOY)
    })
}

fn function_of(labels: Option<&BTreeMap<String, String>>) -> Option<FunctionId> {
    let labels = labels?;
    Some(FunctionId::new(
        labels.get(LABEL_FUNCTION_NAMESPACE)?,
        labels.get(LABEL_FUNCTION)?,
    ))
}

/// The pod as a ready instance, when it is Ready with an IP, not terminating, and labelled.
fn ready_instance(pod: &Pod) -> Option<ReadyInstance> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let PodState::Ready(ip) = pod_state(pod) else {
        return None;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let function = function_of(Some(&labels))?;
    let id = pod.metadata.name.clone()?;
    let Some(generation) = labels
        .get(LABEL_GENERATION)
        .and_then(|g| g.parse::<i64>().ok())
    else {
        tracing::warn!(instance = %id, "ready pod without a numeric {LABEL_GENERATION} label; ignored");
        return None;
    };
    let revision = labels.get(LABEL_REVISION).cloned().unwrap_or_default();
    Some(ReadyInstance {
        function,
        instance: Instance {
            id,
            addr: SocketAddr::new(ip, RUNTIME_PORT).into(),
            labels,
        },
        generation,
        revision,
    })
}

/// A failed run of the fetcher container: (the container's restart count at that run, the
/// message, the detail). The termination log holds the message, then after a blank line the
/// detail (see `kappa_fetcher::Startup::termination_log`).
fn fetcher_failure(pod: &Pod) -> Option<(i32, String, Option<String>)> {
    let status = pod.status.as_ref()?;
    let fetcher = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "fetcher")?;
    let current = fetcher
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| (fetcher.restart_count, t));
    let previous = fetcher
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| (fetcher.restart_count - 1, t));
    let (run, terminated) = current
        .filter(|(_, t)| t.exit_code != 0)
        .or(previous.filter(|(_, t)| t.exit_code != 0))?;
    let code = terminated.exit_code;
    let text = terminated.message.as_deref().unwrap_or("").trim();
    let (message, detail) = match text.split_once("\n\n") {
        Some((message, detail)) => (message.trim(), Some(detail.trim().to_string())),
        None => (text, None),
    };
    let message = if message.is_empty() {
        format!(
            "the fetcher exited with code {code}{}",
            terminated
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    } else {
        message.to_string()
    };
    Some((run, message, detail.filter(|d| !d.is_empty())))
}

/// What the watcher remembers of a pod.
struct Tracked {
    function: FunctionId,
    /// Reported Ready (and not Gone since).
    ready: bool,
    /// The fetcher run (restart count) whose failure was reported last.
    failed_run: Option<i32>,
    /// A container that cannot start was reported (once per pod).
    stuck_reported: bool,
}

/// The watcher's state. Owned by the one task that runs [`KubeDeployments::watch`] (tests call
/// [`KubeDeployments::on_watch_event`] directly); behind a std mutex, never held across an
/// `.await`.
#[derive(Default)]
struct Tracker {
    pods: HashMap<String, Tracked>,
    /// During a (re)list: the pods seen so far; those not seen by its end are gone.
    relisting: Option<HashSet<String>>,
}

/// `newdeploy` functions as Kubernetes Deployments.
pub struct KubeDeployments {
    deployments: Api<Deployment>,
    secrets: Api<Secret>,
    pods: Api<Pod>,
    config: DeploymentsConfig,
    /// Where Environments are read for scheduling fields; `None` uses the instance spec alone.
    store: Option<Arc<dyn Store>>,
    events: broadcast::Sender<DeploymentEvent>,
    tracker: Mutex<Tracker>,
}

impl std::fmt::Debug for KubeDeployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDeployments")
            .field("namespace", &self.config.template.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeDeployments {
    /// Deployments in `config.template.namespace` through `client`.
    pub fn new(client: Client, config: DeploymentsConfig, store: Option<Arc<dyn Store>>) -> Self {
        let namespace = config.template.namespace.clone();
        let (events, _) = broadcast::channel(1024);
        Self {
            deployments: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client, &namespace),
            config,
            store,
            events,
            tracker: Mutex::new(Tracker::default()),
        }
    }

    fn namespace(&self) -> &str {
        &self.config.template.namespace
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates `desired`, or replaces the object of its name with it (`merge` keeps what others
    /// set on the current object), re-reading and retrying on a 409 conflict.
    async fn create_or_replace<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        desired: K,
        merge: impl Fn(K, &K) -> K,
    ) -> Result<(), BackendError>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let name = desired.name_any();
        let ns = self.namespace();
        let params = PostParams {
            field_manager: Some("kappa-executor".into()),
            ..PostParams::default()
        };
        for attempt in 1..=CONFLICT_RETRIES {
            let current = api
                .get_opt(&name)
                .await
                .map_err(|e| BackendError::Io(format!("reading {kind} {ns}/{name}: {e}")))?;
            let result = match current {
                None => api.create(&params, &desired).await,
                Some(current) => {
                    if !managed(current.meta()) {
                        return Err(BackendError::Io(format!(
                            "{kind} {ns}/{name} exists and is not Kappa's (expected the labels {LABEL_MANAGED_BY}=kappa and {LABEL_ROLE}={ROLE_NEWDEPLOY}); delete or rename it"
                        )));
                    }
                    let next = merge(current, &desired);
                    api.replace(&name, &params, &next).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if api_status(&e) == Some(409) => {
                    tracing::debug!(kind, name = %name, attempt, "conflict writing; re-reading");
                }
                Err(e) => {
                    return Err(BackendError::Io(format!("writing {kind} {ns}/{name}: {e}")));
                }
            }
        }
        Err(BackendError::Io(format!(
            "writing {kind} {ns}/{name}: still conflicting after {CONFLICT_RETRIES} attempts"
        )))
    }

    /// Watches the Deployments' pods until `shutdown`, publishing [`DeploymentEvent`]s. Uses
    /// kube-runtime's watcher (re-lists after a 410 and reconnects).
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        follow_pods(
            self.pods.clone(),
            &selector(),
            "deployment pod watch",
            &shutdown,
            |event| self.on_watch_event(event),
        )
        .await;
    }

    /// Applies one pod watch event (public for tests that feed events directly).
    pub fn on_watch_event(&self, event: watcher::Event<Pod>) {
        let events = {
            let mut tracker = self.tracker();
            let t = &mut *tracker;
            match event {
                watcher::Event::Init => {
                    t.relisting = Some(HashSet::new());
                    Vec::new()
                }
                watcher::Event::InitApply(pod) => {
                    if let (Some(seen), Some(name)) =
                        (t.relisting.as_mut(), pod.metadata.name.as_ref())
                    {
                        seen.insert(name.clone());
                    }
                    observe(t, &pod)
                }
                watcher::Event::Apply(pod) => observe(t, &pod),
                watcher::Event::InitDone => {
                    let seen = t.relisting.take().unwrap_or_default();
                    let gone: Vec<String> = t
                        .pods
                        .keys()
                        .filter(|name| !seen.contains(*name))
                        .cloned()
                        .collect();
                    gone.into_iter()
                        .filter_map(|name| forget(t, &name))
                        .collect()
                }
                watcher::Event::Delete(pod) => pod
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|name| forget(t, name))
                    .into_iter()
                    .collect(),
            }
        };
        for event in events {
            match &event {
                DeploymentEvent::Ready(r) => {
                    tracing::debug!(function = %r.function, instance = %r.instance.id, revision = %r.revision, "deployment pod ready")
                }
                DeploymentEvent::Gone { function, id } => {
                    tracing::debug!(function = %function, instance = %id, "deployment pod gone")
                }
                DeploymentEvent::Failed {
                    function,
                    revision,
                    message,
                    ..
                } => {
                    tracing::warn!(function = %function, revision = %revision, %message, "deployment pod failed to load the code")
                }
            }
            let _ = self.events.send(event);
        }
    }
}

/// The events a pod's new state makes.
fn observe(t: &mut Tracker, pod: &Pod) -> Vec<DeploymentEvent> {
    let mut out = Vec::new();
    let (Some(name), Some(function)) = (
        pod.metadata.name.clone(),
        function_of(pod.metadata.labels.as_ref()),
    ) else {
        return out;
    };
    let tracked = t.pods.entry(name.clone()).or_insert_with(|| Tracked {
        function: function.clone(),
        ready: false,
        failed_run: None,
        stuck_reported: false,
    });
    let revision = pod
        .labels()
        .get(LABEL_REVISION)
        .cloned()
        .unwrap_or_default();
    match (tracked.ready, ready_instance(pod)) {
        (false, Some(ready)) => {
            tracked.ready = true;
            out.push(DeploymentEvent::Ready(ready));
        }
        (true, None) => {
            tracked.ready = false;
            out.push(DeploymentEvent::Gone {
                function: function.clone(),
                id: name.clone(),
            });
        }
        _ => {}
    }
    // A pod being deleted is stopped on purpose: its containers' exits are no failures.
    let terminating = pod.metadata.deletion_timestamp.is_some();
    if !terminating
        && let Some((run, message, detail)) = fetcher_failure(pod)
        && tracked.failed_run != Some(run)
    {
        tracked.failed_run = Some(run);
        out.push(DeploymentEvent::Failed {
            function: function.clone(),
            revision: revision.clone(),
            message,
            detail: Some(
                detail.unwrap_or_else(|| {
                    format!("pod {name}: the fetcher container ended (run {run})")
                }),
            ),
        });
    }
    if !terminating
        && let PodState::Failed(why) = pod_state(pod)
        && !tracked.stuck_reported
    {
        tracked.stuck_reported = true;
        out.push(DeploymentEvent::Failed {
            function,
            revision,
            message: why,
            detail: Some(format!("pod {name}")),
        });
    }
    out
}

/// Drops a pod; `Gone` when it was reported ready.
fn forget(t: &mut Tracker, name: &str) -> Option<DeploymentEvent> {
    let tracked = t.pods.remove(name)?;
    tracked.ready.then(|| DeploymentEvent::Gone {
        function: tracked.function,
        id: name.to_string(),
    })
}

fn merge_secret(mut current: Secret, desired: &Secret) -> Secret {
    merge_meta(&mut current.metadata, &desired.metadata);
    current.data = desired.data.clone();
    current.string_data = None;
    current
}

fn merge_deployment(mut current: Deployment, desired: &Deployment) -> Deployment {
    merge_meta(&mut current.metadata, &desired.metadata);
    let kept_annotations = current
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let mut spec = desired.spec.clone();
    // Annotations others put on the pod template (`kubectl rollout restart`'s) stay, so this
    // write does not roll the pods a second time.
    if let Some(meta) = spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        let mut annotations = kept_annotations;
        annotations.extend(meta.annotations.take().unwrap_or_default());
        meta.annotations = Some(annotations);
    }
    current.spec = spec;
    current
}

/// Our labels and annotations over the current ones (others' stay); everything else of the
/// current metadata (the `resourceVersion` precondition included) is kept.
fn merge_meta(current: &mut ObjectMeta, desired: &ObjectMeta) {
    current
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(desired.labels.clone().unwrap_or_default());
    current
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(desired.annotations.clone().unwrap_or_default());
}

#[async_trait]
impl Deployments for KubeDeployments {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn apply(&self, spec: &DeploymentSpec) -> Result<(), BackendError> {
        crate::backend::refuse_host_ports(&spec.specialize.host_ports)
            .map_err(BackendError::Start)?;
        let name = deployment_name(&spec.function);
        let template = &self.config.template;
        let placement =
            environment_placement(self.store.as_deref(), &spec.instance.environment).await;
        let (request, sha) = specialize_request(&self.config, spec);
        // The Secret first: the new pods mount it.
        let secret = specialize_secret(template, spec, &name, &request);
        self.create_or_replace(&self.secrets, "Secret", secret, merge_secret)
            .await?;
        let deployment = function_deployment(template, spec, &placement, &name, &sha);
        self.create_or_replace(
            &self.deployments,
            "Deployment",
            deployment,
            merge_deployment,
        )
        .await?;
        tracing::info!(function = %spec.function, deployment = %name, revision = %spec.revision, replicas = spec.replicas, "deployment applied");
        Ok(())
    }

    async fn scale(
        &self,
        function: &FunctionId,
        replicas: u32,
        remove_first: &[String],
    ) -> Result<(), BackendError> {
        let ns = self.namespace();
        let cost =
            json!({"metadata": {"annotations": {ANNOTATION_DELETION_COST: REMOVE_FIRST_COST}}});
        for id in remove_first {
            match self
                .pods
                .patch(id, &PatchParams::default(), &Patch::Merge(&cost))
                .await
            {
                Ok(_) => {}
                Err(e) if api_status(&e) == Some(404) => {
                    tracing::debug!(instance = %id, "pod to remove first is gone already");
                }
                Err(e) => {
                    return Err(BackendError::Io(format!(
                        "marking pod {ns}/{id} to be removed first ({ANNOTATION_DELETION_COST}): {e}"
                    )));
                }
            }
        }
        let name = deployment_name(function);
        let patch = json!({"spec": {"replicas": replicas}});
        match self
            .deployments
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(function = %function, deployment = %name, replicas, "deployment scaled");
                Ok(())
            }
            Err(e) if api_status(&e) == Some(404) => Err(BackendError::NotFound(format!(
                "Deployment {ns}/{name} of function {function}"
            ))),
            Err(e) => Err(BackendError::Io(format!(
                "scaling Deployment {ns}/{name} to {replicas}: {e}"
            ))),
        }
    }

    async fn delete(&self, function: &FunctionId) -> Result<(), BackendError> {
        let ns = self.namespace();
        let name = deployment_name(function);
        match self
            .deployments
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if api_status(&e) == Some(404) => {}
            Err(e) => {
                return Err(BackendError::Io(format!(
                    "deleting Deployment {ns}/{name}: {e}"
                )));
            }
        }
        match self.secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if api_status(&e) == Some(404) => {}
            Err(e) => {
                return Err(BackendError::Io(format!(
                    "deleting Secret {ns}/{name}: {e}"
                )));
            }
        }
        tracing::info!(function = %function, deployment = %name, "deployment deleted");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<DeploymentStatus>, BackendError> {
        let list = self
            .deployments
            .list(&ListParams::default().labels(&selector()))
            .await
            .map_err(|e| {
                BackendError::Io(format!("listing Deployments in {}: {e}", self.namespace()))
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|d| {
                let function = function_of(d.metadata.labels.as_ref())?;
                let revision = d.labels().get(LABEL_REVISION).cloned().unwrap_or_default();
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
                Some(DeploymentStatus {
                    function,
                    revision,
                    replicas: u32::try_from(replicas).unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn ready(&self) -> Result<Vec<ReadyInstance>, BackendError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector()))
            .await
            .map_err(|e| {
                BackendError::Io(format!(
                    "listing the Deployments' pods in {}: {e}",
                    self.namespace()
                ))
            })?;
        Ok(pods.items.iter().filter_map(ready_instance).collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_dns_labels_distinct_per_namespace() {
        let a = deployment_name(&FunctionId::new("default", "hello"));
        assert_eq!(a, deployment_name(&FunctionId::new("default", "hello")));
        assert!(a.starts_with("fn-hello-"), "{a}");
        assert_eq!(a.len(), "fn-hello-".len() + 8);
        assert_ne!(a, deployment_name(&FunctionId::new("other", "hello")));
        let long = deployment_name(&FunctionId::new("default", "x".repeat(63)));
        assert!(long.len() <= 63, "{long}");
        let odd = deployment_name(&FunctionId::new("default", "A.b-"));
        assert!(odd.starts_with("fn-a-b-"), "{odd}");
        for name in [a, long, odd] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.ends_with('-'),
                "{name}"
            );
        }
    }
}
