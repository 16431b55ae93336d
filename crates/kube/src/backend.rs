//! [`PodBackend`]: the pool manager's [`Backend`] on Kubernetes: every instance is a bare pod
//! (see [`crate::pods`] for its shape and `docs/design/001-pool-pods.md` for why bare pods).
//!
//! - `create` POSTs the pod and polls it until it is Ready with an IP (failing fast on image
//!   pull errors and on a pod that ends), deleting it when it never gets there.
//! - `specialize` POSTs the fetcher's `/specialize` (pod IP, port 8000) with the archive's URL
//!   on the API server, then labels the pod `kappa.dev/role: specialized` with the function and
//!   generation, so a restarted pool manager can adopt it.
//! - `delete` DELETEs the pod with the grace period; `list` returns the labelled pods (warm and
//!   specialized) with their labels, which is what adoption reads.
//! - [`PodBackend::watch_pods`] turns pod terminations (OOMKilled → `oom_killed`) and
//!   deletions it did not ask for into [`InstanceEvent::Exited`].
//! - `shutdown` leaves the pods running by default: the next pool manager adopts them.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kappa_core::{
    Backend, BackendError, ExitReason, FunctionId, Instance, InstanceEvent, InstanceSpec,
    SpecializeRequest,
};
use kappa_store::Store;
use kappa_types::{Environment, Kind};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Error as KubeError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::pods::{
    ANNOTATION_ARCHIVE, LABEL_MANAGED_BY, LABEL_ROLE, Placement, PodTemplate, ROLE_POOL,
    ROLE_SPECIALIZED, pod_has_egress, pool_pod, specialized_labels,
};
use kappa_runtime::{
    FETCHER_PORT, FetchFiles, FetchRequest, RUNTIME_PORT, error_code, pod_fetcher_token,
    runtime_error,
};

/// Configuration of the pod backend (its `Debug` leaves the tokens out).
#[derive(Clone)]
pub struct PodBackendConfig {
    /// Shared shape of the pods.
    pub template: PodTemplate,
    /// The API server's base URL as the fetcher reaches it (`http://kappa-api.kappa:8080`);
    /// archives are downloaded from `<api_url>/v1/archives/<sha256>`.
    pub api_url: String,
    /// Bearer token the fetcher sends with the download (the API token).
    pub api_token: Option<String>,
    /// Key of each pod's fetcher token ([`pod_fetcher_token`]): the platform token, so every
    /// pool manager replica (and a restarted one) derives the same tokens for the pods it
    /// adopts. The default is random, which suits one process's lifetime (tests).
    pub fetcher_key: String,
    /// How long a new pod may take to become Ready (image pull included).
    pub ready_timeout: Duration,
    /// How often a starting pod is polled.
    pub poll_interval: Duration,
    /// Delete every pod on `shutdown` (off: a restarted pool manager adopts them).
    pub delete_on_shutdown: bool,
    /// The fetcher's port on the pod IP (8000; tests run a fetcher on a free port).
    pub fetcher_port: u16,
}

impl Default for PodBackendConfig {
    fn default() -> Self {
        Self {
            template: PodTemplate::default(),
            api_url: "http://kappa-api:8080".into(),
            api_token: None,
            fetcher_key: random_key(),
            ready_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(250),
            delete_on_shutdown: false,
            fetcher_port: FETCHER_PORT,
        }
    }
}

impl std::fmt::Debug for PodBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBackendConfig")
            .field("template", &self.template)
            .field("api_url", &self.api_url)
            .field("ready_timeout", &self.ready_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("delete_on_shutdown", &self.delete_on_shutdown)
            .field("fetcher_port", &self.fetcher_port)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes in hex: a fetcher key for a backend given none.
fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Instances as Kubernetes pods.
pub struct PodBackend {
    pods: Api<Pod>,
    config: PodBackendConfig,
    /// Where Environments are read for scheduling fields (node selector, tolerations,
    /// requests); `None` uses the instance spec alone.
    store: Option<Arc<dyn Store>>,
    http: reqwest::Client,
    events: broadcast::Sender<InstanceEvent>,
    /// Pods whose exit was reported (so each is reported once) or that we deleted ourselves
    /// (so their disappearance is not an "exit"). A std mutex: short sections, never across
    /// an `.await`. Entries are dropped when the pod's deletion is seen, so it stays bounded
    /// by the number of live pods.
    quiet: Mutex<HashSet<String>>,
    /// The pods the watch knows (to notice those that went while it was down) and, while it
    /// re-lists (after a 410 or a restart), those the new list has. Same rules as `quiet`.
    seen: Mutex<Seen>,
}

/// See [`PodBackend::seen`].
#[derive(Debug, Default)]
struct Seen {
    live: HashSet<String>,
    relisted: Option<HashSet<String>>,
}

impl std::fmt::Debug for PodBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBackend")
            .field("namespace", &self.config.template.namespace)
            .finish_non_exhaustive()
    }
}

/// The pods this backend owns: warm and specialized ones. Pods of `newdeploy` Deployments
/// (role `newdeploy`) belong to their ReplicaSet and are left alone.
fn selector() -> String {
    format!("{LABEL_MANAGED_BY}=kappa,{LABEL_ROLE} in ({ROLE_POOL},{ROLE_SPECIALIZED})")
}

/// Follows the pods `pods` selects by `labels` until `shutdown` with kube-runtime's watcher
/// (re-lists after a 410, reconnects with backoff), handing every event to `on_event`.
pub(crate) async fn follow_pods(
    pods: Api<Pod>,
    labels: &str,
    what: &str,
    shutdown: &CancellationToken,
    mut on_event: impl FnMut(watcher::Event<Pod>),
) {
    let config = watcher::Config::default().labels(labels);
    let stream = watcher::watcher(pods, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Ok(event)) => on_event(event),
            Some(Err(error)) => tracing::warn!(%error, "{what} failed; retrying"),
        }
    }
}

pub(crate) fn api_status(e: &KubeError) -> Option<u16> {
    match e {
        KubeError::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Waiting reasons that will not resolve by waiting.
const FATAL_WAITING: [&str; 5] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The pod's state as far as the pool manager cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not ready yet.
    Starting,
    /// Ready, with this IP.
    Ready(IpAddr),
    /// Will never become ready: why.
    Failed(String),
    /// A container ended (or the pod did): how.
    Ended(ExitReason),
}

/// Reads a pod's state from its status.
pub fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Starting;
    };
    if let Some(reason) = exit_reason(pod) {
        return PodState::Ended(reason);
    }
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return PodState::Ended(ExitReason::default());
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = waiting.reason.as_deref()
            && FATAL_WAITING.contains(&reason)
        {
            return PodState::Failed(format!(
                "container {} cannot start: {reason}: {}",
                cs.name,
                waiting.message.as_deref().unwrap_or("")
            ));
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        Some(ip) if ready => PodState::Ready(ip),
        _ => PodState::Starting,
    }
}

/// How a pod's containers ended, if one did (the runtime container first).
pub fn exit_reason(pod: &Pod) -> Option<ExitReason> {
    let status = pod.status.as_ref()?;
    let mut statuses: Vec<_> = status.container_statuses.iter().flatten().collect();
    statuses.sort_by_key(|c| c.name != "runtime");
    statuses.into_iter().find_map(|cs| {
        let terminated = cs.state.as_ref()?.terminated.as_ref()?;
        Some(ExitReason {
            code: Some(terminated.exit_code),
            signal: terminated.signal,
            oom_killed: terminated.reason.as_deref() == Some("OOMKilled"),
        })
    })
}

/// Scheduling fields of an instance's Environment, read from `store` (none: no placement).
/// An Environment that cannot be read gives no placement rather than no instance.
pub(crate) async fn environment_placement(
    store: Option<&dyn Store>,
    environment: &FunctionId,
) -> Placement {
    let Some(store) = store else {
        return Placement::default();
    };
    match store
        .get(Kind::Environment, &environment.namespace, &environment.name)
        .await
    {
        Ok(Some(obj)) => match Environment::from_json(obj.value) {
            Ok(env) => Placement {
                requests: env.spec.resources.requests,
                node_selector: env.spec.node_selector,
                tolerations: env.spec.tolerations,
            },
            Err(e) => {
                tracing::warn!(environment = %environment, error = %e, "unreadable environment; pod gets no placement");
                Placement::default()
            }
        },
        Ok(None) => Placement::default(),
        Err(e) => {
            tracing::warn!(environment = %environment, error = %e, "could not read the environment; pod gets no placement");
            Placement::default()
        }
    }
}

/// The fetcher's request for `request`: the archive's URL on the API server at `api_url`,
/// Secret and ConfigMap values in base64, and the download token.
pub(crate) fn fetch_request(
    api_url: &str,
    api_token: Option<&str>,
    request: &SpecializeRequest,
) -> FetchRequest {
    FetchRequest {
        archive_url: format!(
            "{}/v1/archives/{}",
            api_url.trim_end_matches('/'),
            request.archive_sha256
        ),
        sha256: request.archive_sha256.clone(),
        filename: request.filename.clone(),
        entrypoint: request.entrypoint.clone(),
        env: request.env.clone(),
        files: request.files.iter().map(FetchFiles::from).collect(),
        token: api_token.map(str::to_string),
    }
}

impl PodBackend {
    /// A backend creating pods in `config.template.namespace` through `client`.
    pub fn new(client: Client, config: PodBackendConfig, store: Option<Arc<dyn Store>>) -> Self {
        let pods = Api::namespaced(client, &config.template.namespace);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let (events, _) = broadcast::channel(1024);
        Self {
            pods,
            config,
            store,
            http,
            events,
            quiet: Mutex::new(HashSet::new()),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn quiet(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.quiet.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports the disappearance of a pod this backend did not delete.
    fn vanished(&self, id: String, reason: ExitReason, why: &str) {
        if !self.quiet().remove(&id) {
            tracing::warn!(instance = %id, %reason, "{why}");
            let _ = self.events.send(InstanceEvent::Exited { id, reason });
        }
    }

    async fn wait_ready(&self, id: &str) -> Result<IpAddr, BackendError> {
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        loop {
            match self.pods.get_opt(id).await {
                Ok(Some(pod)) => match pod_state(&pod) {
                    PodState::Ready(ip) => return Ok(ip),
                    PodState::Failed(why) => return Err(BackendError::Start(why)),
                    PodState::Ended(reason) => {
                        return Err(BackendError::Start(format!(
                            "pod {id} {reason} before it was ready"
                        )));
                    }
                    PodState::Starting => {}
                },
                Ok(None) => {
                    return Err(BackendError::Start(format!(
                        "pod {id} was deleted before it was ready"
                    )));
                }
                Err(e) => {
                    tracing::debug!(instance = id, error = %e, "reading pod failed; retrying")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Timeout(format!(
                    "pod {id} was not ready within {} s",
                    self.config.ready_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Watches the backend's pods until `shutdown`, sending [`InstanceEvent::Exited`] when a
    /// pod's container terminates or a pod disappears without this backend deleting it.
    /// Uses kube-runtime's watcher (re-lists after a 410 and reconnects with backoff).
    pub async fn watch_pods(self: Arc<Self>, shutdown: CancellationToken) {
        follow_pods(
            self.pods.clone(),
            &selector(),
            "pod watch",
            &shutdown,
            |event| {
                self.on_watch_event(event);
            },
        )
        .await;
    }

    /// Applies one pod watch event (public for tests that feed events directly).
    pub fn on_watch_event(&self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let Some(id) = pod.metadata.name.clone() else {
                    return;
                };
                {
                    let mut seen = self.seen();
                    seen.live.insert(id.clone());
                    if let Some(relisted) = seen.relisted.as_mut() {
                        relisted.insert(id.clone());
                    }
                }
                if let PodState::Ended(reason) = pod_state(&pod)
                    && self.quiet().insert(id.clone())
                {
                    tracing::warn!(instance = %id, %reason, "pod ended");
                    let _ = self.events.send(InstanceEvent::Exited { id, reason });
                }
            }
            watcher::Event::Delete(pod) => {
                let Some(id) = pod.metadata.name.clone() else {
                    return;
                };
                self.seen().live.remove(&id);
                let reason = exit_reason(&pod).unwrap_or_default();
                self.vanished(id, reason, "pod deleted outside the pool manager");
            }
            // A (re-)list starts: after it, the pods it did not have went meanwhile.
            watcher::Event::Init => self.seen().relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let gone: Vec<String> = {
                    let mut seen = self.seen();
                    match seen.relisted.take() {
                        Some(relisted) => {
                            let gone = seen.live.difference(&relisted).cloned().collect();
                            seen.live = relisted;
                            gone
                        }
                        None => Vec::new(),
                    }
                };
                for id in gone {
                    self.vanished(
                        id,
                        ExitReason::default(),
                        "pod deleted while the pod watch was down",
                    );
                }
            }
        }
    }
}

/// Pods have no host loopback to relay to: an instance that names `hostPorts` is refused
/// rather than started without them. The message names the field.
pub(crate) fn refuse_host_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    Err(format!(
        "hostPorts [{}]: the Kubernetes backend cannot relay ports of a host's loopback into a \
         pod (it only exists for local development with the local backend); remove hostPorts \
         from the function and its environment, and reach the service through a Kubernetes \
         Service instead",
        list.join(", ")
    ))
}

/// A pod's egress is fixed when it is created (its [`LABEL_EGRESS`] label selects the
/// NetworkPolicy that takes egress away), so a specialization that asks for something else than
/// the pool pod has is refused rather than run with the wrong network. The message names the
/// field and what to change.
pub(crate) fn refuse_egress_mismatch(
    pod_labels: &BTreeMap<String, String>,
    wanted: bool,
) -> Result<(), String> {
    let has = pod_has_egress(pod_labels);
    if has == wanted {
        return Ok(());
    }
    let (function_says, pods_have) = if wanted {
        (
            "true",
            "without egress (the environment says egress: false)",
        )
    } else {
        ("false", "with egress (the environment allows it)")
    };
    Err(format!(
        "egress: the function says {function_says}, but its environment's warm pods were made \
         {pods_have}; on Kubernetes a pod's egress is fixed when the pod is created, so set \
         egress on the Environment (or give the function an environment of its own, or use the \
         newdeploy executor, whose pods are made for the function)"
    ))
}

#[async_trait]
impl Backend for PodBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn create(&self, spec: InstanceSpec) -> Result<Instance, BackendError> {
        refuse_host_ports(&spec.host_ports).map_err(BackendError::Start)?;
        let placement = environment_placement(self.store.as_deref(), &spec.environment).await;
        let token = pod_fetcher_token(&self.config.fetcher_key, &spec.id);
        let pod = pool_pod(&self.config.template, &spec, &placement, &token);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| BackendError::Start(format!("creating pod {}: {e}", spec.id)))?;
        tracing::debug!(instance = %spec.id, environment = %spec.environment, "pod created");
        match self.wait_ready(&spec.id).await {
            Ok(ip) => Ok(Instance {
                id: spec.id,
                addr: SocketAddr::new(ip, RUNTIME_PORT).into(),
                labels,
            }),
            Err(e) => {
                let _ = self.delete(&spec.id, Duration::ZERO).await;
                Err(e)
            }
        }
    }

    async fn specialize(
        &self,
        instance: &Instance,
        request: &SpecializeRequest,
    ) -> Result<(), BackendError> {
        refuse_host_ports(&request.host_ports)
            .and_then(|()| refuse_egress_mismatch(&instance.labels, request.egress))
            .map_err(|message| BackendError::Specialize {
                status: None,
                message,
                detail: None,
            })?;
        // Pods are reached over their IP; the fetcher listens beside the runtime.
        let ip = instance
            .addr
            .tcp()
            .map(|a| a.ip())
            .ok_or_else(|| BackendError::Specialize {
                status: None,
                message: format!("pod instance {} has no IP address", instance.id),
                detail: None,
            })?;
        let url = format!(
            "http://{}/specialize",
            SocketAddr::new(ip, self.config.fetcher_port)
        );
        let body = fetch_request(
            &self.config.api_url,
            self.config.api_token.as_deref(),
            request,
        );
        let response = self
            .http
            .post(&url)
            .bearer_auth(pod_fetcher_token(&self.config.fetcher_key, &instance.id))
            .json(&body)
            .timeout(request.timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    BackendError::Timeout(format!(
                        "the fetcher of pod {} did not answer within {} s",
                        instance.id,
                        request.timeout.as_secs()
                    ))
                } else {
                    BackendError::Specialize {
                        status: None,
                        message: format!(
                            "could not reach the fetcher of pod {} at {url}: {e}",
                            instance.id
                        ),
                        detail: None,
                    }
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            let code = error_code(&bytes);
            let (message, detail) = runtime_error(status.as_u16(), &bytes);
            return Err(match code.as_deref() {
                Some("download_failed" | "checksum_mismatch" | "too_large" | "place_failed") => {
                    BackendError::Code(message)
                }
                _ => BackendError::Specialize {
                    status: Some(status.as_u16()),
                    message,
                    detail,
                },
            });
        }
        let patch = serde_json::json!({
            "metadata": {
                "labels": specialized_labels(&request.function, request.generation),
                "annotations": { ANNOTATION_ARCHIVE: request.archive_sha256 },
            }
        });
        self.pods
            .patch(&instance.id, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| {
                BackendError::Io(format!(
                    "labelling pod {} as specialized failed: {e}",
                    instance.id
                ))
            })?;
        tracing::info!(instance = %instance.id, function = %request.function, generation = request.generation, "pod specialized");
        Ok(())
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.quiet().insert(id.to_string());
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        match self.pods.delete(id, &params).await {
            Ok(_) => Ok(()),
            Err(e) if api_status(&e) == Some(404) => {
                self.quiet().remove(id);
                Err(BackendError::NotFound(id.to_string()))
            }
            Err(e) => Err(BackendError::Io(format!("deleting pod {id}: {e}"))),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, BackendError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector()))
            .await
            .map_err(|e| BackendError::Io(format!("listing pods: {e}")))?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut ready = Vec::new();
        let mut dead = Vec::new();
        for pod in pods.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(id) = pod.metadata.name.clone() else {
                continue;
            };
            match pod_state(&pod) {
                PodState::Ready(ip) => ready.push(Instance {
                    id,
                    addr: SocketAddr::new(ip, RUNTIME_PORT).into(),
                    labels: pod.metadata.labels.unwrap_or_default(),
                }),
                PodState::Failed(_) | PodState::Ended(_) => dead.push(id),
                PodState::Starting => {
                    // Left starting by a pool manager that is gone: nobody waits for it.
                    let age = pod
                        .metadata
                        .creation_timestamp
                        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
                        .unwrap_or_default();
                    if age > self.config.ready_timeout {
                        dead.push(id);
                    }
                }
            }
        }
        for id in dead {
            tracing::info!(instance = %id, "deleting a pod that ended or never became ready");
            let _ = self.delete(&id, Duration::ZERO).await;
        }
        Ok(ready)
    }

    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    async fn shutdown(&self, grace: Duration) {
        if !self.config.delete_on_shutdown {
            tracing::info!("leaving function pods running for the next pool manager to adopt");
            return;
        }
        let Ok(instances) = self.list().await else {
            return;
        };
        for instance in instances {
            let _ = self.delete(&instance.id, grace).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_egress_other_than_the_pods_is_refused_naming_the_field() {
        use crate::pods::{EGRESS_NONE, LABEL_EGRESS, pool_labels};
        let mut labels = pool_labels(&crate::pods::tests::spec());
        refuse_egress_mismatch(&labels, true).unwrap();
        let err = refuse_egress_mismatch(&labels, false).unwrap_err();
        assert!(err.starts_with("egress: the function says false"), "{err}");
        labels.insert(LABEL_EGRESS.into(), EGRESS_NONE.into());
        refuse_egress_mismatch(&labels, false).unwrap();
        let err = refuse_egress_mismatch(&labels, true).unwrap_err();
        assert!(err.contains("egress: false"), "{err}");
    }

    #[test]
    fn host_ports_are_refused_naming_the_field() {
        refuse_host_ports(&[]).unwrap();
        let err = refuse_host_ports(&[5432, 6379]).unwrap_err();
        assert!(err.starts_with("hostPorts [5432, 6379]"), "{err}");
    }
}
