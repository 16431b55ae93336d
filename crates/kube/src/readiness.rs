//! [`PodReadinessWatcher`]: the router's second source for its endpoint index. It watches the
//! function pods that serve requests (`kappa.dev/role` `specialized` or `newdeploy`) in the
//! function namespace and reports their readiness to a [`Readiness`] (the router's
//! `ReadinessGate`), so an endpoint leaves the router's index as soon as its pod stops being
//! ready, without waiting for the executor's endpoint feed.
//!
//! - Ready (condition `Ready=True`, no container terminated, not being deleted) →
//!   `set_ready(pod, true)`; anything else → `set_ready(pod, false)`. Only changes are
//!   reported.
//! - Deleted → `set_ready(pod, false)`, then `forget(pod)` after
//!   [`PodReadinessConfig::forget_after`], so memory stays bounded by the pods that exist plus
//!   those deleted recently. A pod missing from a re-list (deleted while the watch was down) is
//!   treated as deleted.
//!
//! The instance id is the pod name for every pod Kappa creates (pool pods are named after their
//! instance id; a newdeploy instance's id is its pod's name).
//!
//! It only reads the API (list and watch of pods: `get`, `list`, `watch` in the function
//! namespace) and runs in the background; a warm request never waits on it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kappa_core::Readiness;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Error as KubeError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::exit_reason;
use crate::pods::{LABEL_MANAGED_BY, LABEL_ROLE, ROLE_NEWDEPLOY, ROLE_SPECIALIZED};

/// How long a deleted pod is remembered (as not ready) before it is forgotten: long enough
/// for the executor's feed to drop its endpoint, so a late feed event cannot re-admit it.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The label selector of the pods whose readiness matters to the router: Kappa's serving pods
/// (specialized pool pods and newdeploy pods), not warm generic ones.
pub fn selector() -> String {
    format!("{LABEL_MANAGED_BY}=kappa,{LABEL_ROLE} in ({ROLE_SPECIALIZED},{ROLE_NEWDEPLOY})")
}

/// Whether a pod can serve requests: its `Ready` condition is `True`, no container has
/// terminated, it has not ended and it is not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) || exit_reason(pod).is_some()
    {
        return false;
    }
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Where and how the watcher runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReadinessConfig {
    /// The namespace function pods run in.
    pub namespace: String,
    /// How long a deleted pod is remembered before `forget` ([`FORGET_AFTER`]).
    pub forget_after: Duration,
}

impl PodReadinessConfig {
    /// Watches `namespace`, forgetting deleted pods after [`FORGET_AFTER`].
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            forget_after: FORGET_AFTER,
        }
    }
}

/// Watches the function pods and drives a [`Readiness`] with what it sees.
pub struct PodReadinessWatcher {
    pods: Api<Pod>,
    config: PodReadinessConfig,
    gate: Arc<dyn Readiness>,
    /// The readiness last reported per pod (only changes are reported). Owned by the watch task.
    known: HashMap<String, bool>,
    /// Pods seen since the watcher began a (re-)list, until it is complete.
    relisted: Option<HashSet<String>>,
    /// Deleted pods to forget, by deadline. One delay for all, so pushing at the back keeps
    /// the queue ordered.
    forget: VecDeque<(Instant, String)>,
}

impl std::fmt::Debug for PodReadinessWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodReadinessWatcher")
            .field("config", &self.config)
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl PodReadinessWatcher {
    /// A watcher of `config.namespace`'s function pods reporting to `gate`.
    pub fn new(client: Client, config: PodReadinessConfig, gate: Arc<dyn Readiness>) -> Self {
        Self {
            pods: Api::namespaced(client, &config.namespace),
            config,
            gate,
            known: HashMap::new(),
            relisted: None,
            forget: VecDeque::new(),
        }
    }

    /// Watches until `shutdown`. Uses kube-runtime's watcher (re-lists after a 410, backs off
    /// on errors); while the API is unreachable the last reports stand.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let selector = selector();
        tracing::info!(namespace = %self.config.namespace, %selector, "watching function pods' readiness");
        let config = watcher::Config::default().labels(&selector);
        let stream = watcher::watcher(self.pods.clone(), config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let next_forget = self.forget.front().map(|(at, _)| *at);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep_until(next_forget) => self.forget_due(Instant::now()),
                event = stream.next() => match event {
                    None => return,
                    Some(Ok(event)) => self.on_event(event),
                    Some(Err(error)) => self.log_error(&error),
                },
            }
        }
    }

    fn log_error(&self, error: &watcher::Error) {
        let api = match error {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => match e {
                KubeError::Api(status) => Some(status.code),
                _ => None,
            },
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::NoResourceVersion => None,
        };
        if api == Some(403) {
            tracing::warn!(namespace = %self.config.namespace, %error, "the pod readiness watch is forbidden: the router's service account needs get, list and watch on pods in the function namespace; retrying");
        } else {
            tracing::warn!(namespace = %self.config.namespace, %error, "the pod readiness watch failed; retrying");
        }
    }

    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(name), Some(seen)) = (&pod.metadata.name, self.relisted.as_mut()) {
                    seen.insert(name.clone());
                }
                self.applied(&pod);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    let missing: Vec<String> = self
                        .known
                        .keys()
                        .filter(|name| !seen.contains(*name))
                        .cloned()
                        .collect();
                    for name in missing {
                        self.deleted(name);
                    }
                }
            }
            watcher::Event::Apply(pod) => self.applied(&pod),
            watcher::Event::Delete(pod) => {
                if let Some(name) = pod.metadata.name {
                    self.deleted(name);
                }
            }
        }
    }

    fn applied(&mut self, pod: &Pod) {
        let Some(name) = &pod.metadata.name else {
            return;
        };
        let ready = pod_ready(pod);
        if self.known.get(name) != Some(&ready) {
            tracing::debug!(instance = %name, ready, "pod readiness changed");
            self.known.insert(name.clone(), ready);
            self.gate.set_ready(name, ready);
        }
    }

    fn deleted(&mut self, name: String) {
        if self.known.remove(&name) != Some(false) {
            tracing::debug!(instance = %name, "pod deleted");
            self.gate.set_ready(&name, false);
        }
        self.forget
            .push_back((Instant::now() + self.config.forget_after, name));
    }

    fn forget_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.forget.front()
            && *at <= now
        {
            let Some((_, name)) = self.forget.pop_front() else {
                break;
            };
            // A pod of the same name that appeared since is reported afresh, not forgotten.
            if !self.known.contains_key(&name) {
                self.gate.forget(&name);
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("pod fixture: {e}"))
    }

    #[test]
    fn the_selector_names_the_serving_roles() {
        assert_eq!(
            selector(),
            "app.kubernetes.io/managed-by=kappa,kappa.dev/role in (specialized,newdeploy)"
        );
    }

    #[test]
    fn readiness_reads_the_condition_terminations_and_deletion() {
        let ready = json!({"metadata": {"name": "p"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(pod_ready(&pod(ready.clone())));
        let mut not_ready = ready.clone();
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        assert!(!pod_ready(&pod(not_ready)));
        let mut deleting = ready.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert!(!pod_ready(&pod(deleting)));
        let mut terminated = ready.clone();
        terminated["status"]["containerStatuses"] = json!([{"name": "runtime", "ready": false,
            "restartCount": 0, "image": "i", "imageID": "",
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]);
        assert!(!pod_ready(&pod(terminated)));
        let mut failed = ready;
        failed["status"]["phase"] = json!("Failed");
        assert!(!pod_ready(&pod(failed)));
        assert!(!pod_ready(&pod(json!({"metadata": {"name": "p"}}))));
    }
}
