//! [`KubeStore`]: Kappa's [`Store`] on the Kubernetes API, so `kubectl apply -f function.yaml`
//! and `kappa fn create` are two ways to the same state.
//!
//! Mapping (every call is one or two plain API requests; nothing is cached):
//! - `get` → `GET .../<plural>/<name>` (404 → `None`).
//! - `list` → `GET .../<plural>` (all namespaces when none is given); the list's
//!   `resourceVersion` is the version to watch from.
//! - `put` → `POST` (create) or `PUT` (replace) with `metadata.resourceVersion` as the
//!   precondition; 409 `AlreadyExists` → [`StoreError::AlreadyExists`], 409 `Conflict` →
//!   [`StoreError::Conflict`]. Without a caller precondition a conflicting replace is retried
//!   (re-read, replace) a bounded number of times. A `status` given on create is written with a
//!   second request to the status subresource (the API server drops it on create).
//! - `put_status` → `GET` then `PUT .../<name>/status`.
//! - `delete` → `GET` then `DELETE` with a `resourceVersion` precondition when one was asked.
//! - `watch` → one `GET ...?watch=1&resourceVersion=N&allowWatchBookmarks=true` per kind,
//!   re-opened from the last seen version (bookmarks included) when the server ends it;
//!   410 Gone → [`StoreError::Gone`], then the stream ends.
//!
//! Resource versions are etcd revisions parsed as `u64` (see [`crate::convert::parse_rv`]);
//! they are global across kinds, as the trait requires. Across kinds the merged watch stream is
//! ordered per kind only (each kind is its own Kubernetes watch); consumers that resume from
//! the largest version they saw should resume per kind.
//!
//! Secrets and ConfigMaps are the native `v1` objects; the store lists and watches those
//! labelled `app.kubernetes.io/managed-by: kappa` (the label it puts on the ones it writes).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use kappa_store::{EventType, List, Precondition, Store, StoreError, StoredObject, WatchEvent};
use kappa_types::Kind;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, WatchParams,
};
use kube::core::WatchEvent as KubeEvent;
use kube::{Client, Error as KubeError};
use tokio::sync::mpsc;

use crate::convert::{self, MANAGED_BY, MANAGED_BY_LABEL, api_resource, from_kube, is_native};
use crate::crd::CRD_KINDS;

/// How often a write without a precondition is retried after a 409 Conflict (someone else
/// wrote in between our read and our write).
const CONFLICT_RETRIES: usize = 5;
/// Seconds a single watch request stays open before the server ends it (and we re-open it
/// from the last version seen).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Watch events buffered per [`Store::watch`] stream before the Kubernetes watch waits for the
/// consumer (bounded, so a slow consumer slows its own watch, not memory).
const WATCH_BUFFER: usize = 256;

/// The Kubernetes-backed store. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

fn status_code(e: &KubeError) -> Option<(u16, &str)> {
    match e {
        KubeError::Api(status) => Some((status.code, status.reason.as_str())),
        _ => None,
    }
}

fn backend(step: &str, e: KubeError) -> StoreError {
    StoreError::Backend(format!("{step}: {e}"))
}

fn not_found(kind: Kind, namespace: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

impl KubeStore {
    /// A store on this client (in a cluster: `Client::try_default()`; tests: a mock service).
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(kind);
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn list_params(kind: Kind) -> ListParams {
        if is_native(kind) {
            ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
        } else {
            ListParams::default()
        }
    }

    async fn get_raw(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, StoreError> {
        self.api(kind, Some(namespace))
            .get_opt(name)
            .await
            .map_err(|e| backend(&format!("reading {kind} {namespace}/{name}"), e))
    }

    /// The version an object is at now (0 when absent), for a Conflict error's `actual`.
    async fn actual_version(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        match self.get_raw(kind, namespace, name).await {
            Ok(Some(o)) => {
                convert::parse_rv(o.metadata.resource_version.as_deref(), "object").unwrap_or(0)
            }
            _ => 0,
        }
    }

    async fn write_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: DynamicObject,
        status: serde_json::Value,
    ) -> Result<DynamicObject, KubeError> {
        object.data["status"] = status;
        self.api(kind, Some(namespace))
            .replace_status(name, &PostParams::default(), &object)
            .await
    }

    async fn create(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<StoredObject, StoreError> {
        let object = convert::to_kube(kind, value, None)?;
        let created = match self
            .api(kind, Some(namespace))
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(o) => o,
            Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                return Err(StoreError::AlreadyExists {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(map_write_error(kind, namespace, name, e)),
        };
        let status = value.get("status").filter(|s| {
            !s.is_null() && s.as_object().is_none_or(|m| !m.is_empty()) && !is_native(kind)
        });
        let created = match status {
            Some(status) => self
                .write_status(kind, namespace, name, created, status.clone())
                .await
                .map_err(|e| map_write_error(kind, namespace, name, e))?,
            None => created,
        };
        from_kube(kind, &created)
    }

    async fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        value: &serde_json::Value,
        resource_version: u64,
    ) -> Result<StoredObject, KubeError> {
        let object = convert::to_kube(kind, value, Some(resource_version))
            .map_err(|e| KubeError::Service(Box::new(e)))?;
        let replaced = self
            .api(kind, Some(namespace))
            .replace(name, &PostParams::default(), &object)
            .await?;
        from_kube(kind, &replaced).map_err(|e| KubeError::Service(Box::new(e)))
    }
}

/// Errors of a write mapped to the store's: 404 → NotFound, 422/400 → Invalid (the API
/// server's schema validation names the field), anything else → Backend.
fn map_write_error(kind: Kind, namespace: &str, name: &str, e: KubeError) -> StoreError {
    match &e {
        KubeError::Api(status) if status.code == 404 => not_found(kind, namespace, name),
        KubeError::Api(status) if status.code == 422 || status.code == 400 => {
            StoreError::Invalid(status.message.clone())
        }
        KubeError::Service(inner) => match inner.downcast_ref::<StoreError>() {
            Some(store) => store.clone(),
            None => backend(&format!("writing {kind} {namespace}/{name}"), e),
        },
        _ => backend(&format!("writing {kind} {namespace}/{name}"), e),
    }
}

#[async_trait]
impl Store for KubeStore {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.get_raw(kind, namespace, name)
            .await?
            .map(|o| from_kube(kind, &o))
            .transpose()
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<List, StoreError> {
        let list = self
            .api(kind, namespace)
            .list(&Self::list_params(kind))
            .await
            .map_err(|e| backend(&format!("listing {}", kind.plural()), e))?;
        let resource_version = convert::parse_rv(
            list.metadata.resource_version.as_deref(),
            &format!("the list of {}", kind.plural()),
        )?;
        let mut items = list
            .items
            .iter()
            .map(|o| from_kube(kind, o))
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(List {
            items,
            resource_version,
        })
    }

    async fn put(
        &self,
        value: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        let (kind, namespace, name) = convert::key_of(&value)?;
        match precondition {
            Precondition::MustNotExist => self.create(kind, &namespace, &name, &value).await,
            Precondition::ResourceVersion(expected) => {
                match self
                    .replace(kind, &namespace, &name, &value, expected)
                    .await
                {
                    Ok(stored) => Ok(stored),
                    Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                        Err(StoreError::Conflict {
                            kind,
                            namespace: namespace.clone(),
                            name: name.clone(),
                            expected,
                            actual: self.actual_version(kind, &namespace, &name).await,
                        })
                    }
                    Err(e) => Err(map_write_error(kind, &namespace, &name, e)),
                }
            }
            Precondition::None | Precondition::MustExist => {
                let mut last = None;
                for attempt in 0..CONFLICT_RETRIES {
                    let current = self.get_raw(kind, &namespace, &name).await?;
                    let Some(current) = current else {
                        if precondition == Precondition::MustExist {
                            return Err(not_found(kind, &namespace, &name));
                        }
                        match self.create(kind, &namespace, &name, &value).await {
                            // Created by someone else in between: replace it on the next turn.
                            Err(StoreError::AlreadyExists { .. }) => continue,
                            other => return other,
                        }
                    };
                    let rv = convert::parse_rv(
                        current.metadata.resource_version.as_deref(),
                        &format!("{kind} {namespace}/{name}"),
                    )?;
                    match self.replace(kind, &namespace, &name, &value, rv).await {
                        Ok(stored) => return Ok(stored),
                        Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                            tracing::debug!(kind = %kind, namespace, name, attempt, "write conflict; retrying");
                            last = Some(rv);
                        }
                        Err(e) => return Err(map_write_error(kind, &namespace, &name, e)),
                    }
                }
                Err(StoreError::Conflict {
                    kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    expected: last.unwrap_or(0),
                    actual: self.actual_version(kind, &namespace, &name).await,
                })
            }
        }
    }

    async fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        if is_native(kind) {
            return Err(StoreError::Invalid(format!(
                "{kind} has no status in Kubernetes (it is a native v1 object)"
            )));
        }
        let mut object = self
            .get_raw(kind, namespace, name)
            .await?
            .ok_or_else(|| not_found(kind, namespace, name))?;
        let current = convert::parse_rv(
            object.metadata.resource_version.as_deref(),
            &format!("{kind} {namespace}/{name}"),
        )?;
        match precondition {
            Precondition::MustNotExist => {
                return Err(StoreError::AlreadyExists {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
            Precondition::ResourceVersion(expected) if expected != current => {
                return Err(StoreError::Conflict {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    expected,
                    actual: current,
                });
            }
            _ => {}
        }
        object.metadata.managed_fields = None;
        match self
            .write_status(kind, namespace, name, object, status)
            .await
        {
            Ok(o) => from_kube(kind, &o),
            Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                Err(StoreError::Conflict {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    expected: current,
                    actual: self.actual_version(kind, namespace, name).await,
                })
            }
            Err(e) => Err(map_write_error(kind, namespace, name, e)),
        }
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        let object = self
            .get_raw(kind, namespace, name)
            .await?
            .ok_or_else(|| not_found(kind, namespace, name))?;
        let last = from_kube(kind, &object)?;
        let mut params = DeleteParams::default();
        match precondition {
            Precondition::MustNotExist => {
                return Err(StoreError::AlreadyExists {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
            Precondition::ResourceVersion(expected) => {
                params.preconditions = Some(Preconditions {
                    resource_version: Some(expected.to_string()),
                    uid: None,
                });
            }
            // Delete the object we read, not a later one of the same name.
            Precondition::None | Precondition::MustExist => {
                params.preconditions = Some(Preconditions {
                    resource_version: None,
                    uid: object.metadata.uid.clone(),
                });
            }
        }
        match self.api(kind, Some(namespace)).delete(name, &params).await {
            Ok(_) => Ok(last),
            Err(e) if status_code(&e).is_some_and(|(code, _)| code == 404) => {
                Err(not_found(kind, namespace, name))
            }
            Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                let expected = match precondition {
                    Precondition::ResourceVersion(v) => v,
                    _ => last.resource_version,
                };
                Err(StoreError::Conflict {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    expected,
                    actual: self.actual_version(kind, namespace, name).await,
                })
            }
            Err(e) => Err(backend(&format!("deleting {kind} {namespace}/{name}"), e)),
        }
    }

    fn watch(&self, kinds: &[Kind], since: Option<u64>) -> kappa_store::WatchStream {
        let kinds: Vec<Kind> = if kinds.is_empty() {
            CRD_KINDS
                .into_iter()
                .chain([Kind::Secret, Kind::ConfigMap])
                .collect()
        } else {
            kinds.to_vec()
        };
        let (tx, mut rx) = mpsc::channel(WATCH_BUFFER);
        let this = Arc::new(self.clone());
        tokio::spawn(async move {
            let start = match since {
                Some(v) => v,
                None => match this.current_version().await {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let tasks: Vec<_> = kinds
                .into_iter()
                .map(|kind| {
                    let this = Arc::clone(&this);
                    let tx = tx.clone();
                    tokio::spawn(async move { this.watch_kind(kind, start, tx).await })
                })
                .collect();
            drop(tx);
            for task in tasks {
                let _ = task.await;
            }
        });
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        let list = self
            .api(Kind::Function, None)
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(|e| backend("reading the current resource version", e))?;
        convert::parse_rv(
            list.metadata.resource_version.as_deref(),
            "the list of functions",
        )
    }
}

type EventSender = mpsc::Sender<Result<WatchEvent, StoreError>>;

impl KubeStore {
    /// Watches one kind from `since`, re-opening the watch from the last version seen (events
    /// and bookmarks) whenever the server ends it, until Gone, an error, or the consumer leaves.
    async fn watch_kind(&self, kind: Kind, since: u64, tx: EventSender) {
        let api = self.api(kind, None);
        // Bookmarks are on by default: they advance `version` while nothing changes.
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if is_native(kind) {
            params = params.labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        }
        let mut version = since;
        let mut failures = 0u32;
        loop {
            let stream = match api.watch(&params, &version.to_string()).await {
                Ok(s) => s,
                Err(e) => {
                    if let Some((410, _)) = status_code(&e) {
                        let _ = tx.send(Err(gone(version))).await;
                        return;
                    }
                    failures += 1;
                    if failures > 5 {
                        let _ = tx
                            .send(Err(backend(&format!("watching {}", kind.plural()), e)))
                            .await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200 << failures.min(5))).await;
                    continue;
                }
            };
            failures = 0;
            let mut stream = std::pin::pin!(stream.into_stream());
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::debug!(kind = %kind, error = %e, "watch stream broke; re-opening");
                        break;
                    }
                };
                let (event_type, object) = match event {
                    KubeEvent::Added(o) => (EventType::Added, o),
                    KubeEvent::Modified(o) => (EventType::Modified, o),
                    KubeEvent::Deleted(o) => (EventType::Deleted, o),
                    KubeEvent::Bookmark(b) => {
                        if let Ok(v) = b.metadata.resource_version.parse() {
                            version = v;
                        }
                        continue;
                    }
                    KubeEvent::Error(status) if status.code == 410 => {
                        let _ = tx.send(Err(gone(version))).await;
                        return;
                    }
                    KubeEvent::Error(status) => {
                        let _ = tx
                            .send(Err(StoreError::Backend(format!(
                                "watching {}: {} ({})",
                                kind.plural(),
                                status.message,
                                status.code
                            ))))
                            .await;
                        return;
                    }
                };
                let object = match from_kube(kind, &object) {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                version = version.max(object.resource_version);
                if tx
                    .send(Ok(WatchEvent { event_type, object }))
                    .await
                    .is_err()
                {
                    return; // the consumer left
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

fn gone(requested: u64) -> StoreError {
    StoreError::Gone {
        requested,
        oldest: 0,
    }
}
