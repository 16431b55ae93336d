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
//!   (re-read, replace) up to [`CONFLICT_RETRIES`] times, with a short random pause between
//!   tries. A `status` given on create is written with a second request to the status
//!   subresource (the API server drops it on create).
//! - `put_status` → `GET` then `PUT .../<name>/status` (retried the same way without a
//!   caller precondition).
//! - `delete` → `GET` then `DELETE` with a `resourceVersion` precondition when one was asked.
//!   The answer is the object at the deletion's version: the one the API server returns when
//!   it keeps the object for its finalizers; when it removes it at once it answers with a
//!   `Status` naming no version, so the version is read right after (exact unless another write
//!   came in between, and never older than the deletion).
//! - `watch` → one `GET ...?watch=1&resourceVersion=N&allowWatchBookmarks=true` per kind,
//!   re-opened from the last seen version (bookmarks included) when the server ends it;
//!   410 Gone → [`StoreError::Gone`] (once per stream, with the oldest version the watch
//!   cache's message names), then the stream ends. `since: None` starts from the newest
//!   version this store has read or written (changes others made since then are replayed); a
//!   store that has seen none asks the server when the watch starts, after the call, so a
//!   write made right after the call can be missed: read before watching. `since: Some(0)`
//!   is Kubernetes' `resourceVersion=0`, "any version": the current objects as `Added`, then
//!   changes, not the history. A stream ends when the consumer drops it, and when every clone
//!   of the store is dropped. [`KubeStore::with_options`] sets the stream's buffer.
//!
//! Objects being deleted: an object carrying `metadata.deletionTimestamp` (Kubernetes waits for
//! its finalizers) is, to the platform, already deleted. `get` answers `None`, `list` leaves it
//! out, writes to it answer [`StoreError::NotFound`], and `watch` reports its deletion once:
//! when the deletionTimestamp appears (the event carrying it becomes a `Deleted`); later
//! changes of it and its final removal are not reported again. An object removed without ever
//! carrying one (no finalizers) is reported when it is removed. Creating an object whose name
//! is still held by one being deleted fails with [`StoreError::Terminating`]. Functions are
//! created with the finalizer [`FUNCTION_FINALIZER`] (the executor's
//! [`crate::finalizer`] controller removes it once the function's instances are gone), and
//! replacements keep the finalizers and owner references already on the object.
//!
//! Resource versions are etcd revisions parsed as `u64` (see [`crate::convert::parse_rv`]);
//! they are global across kinds, as the trait requires. Across kinds the merged watch stream is
//! ordered per kind only (each kind is its own Kubernetes watch); consumers that resume from
//! the largest version they saw should resume per kind.
//!
//! Secrets and ConfigMaps are the native `v1` objects; the store lists and watches those
//! labelled `app.kubernetes.io/managed-by: kappa` (the label it puts on the ones it writes).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use kappa_store::{
    EventType, List, Precondition, Store, StoreError, StoreOptions, StoredObject, WatchEvent,
};
use kappa_types::Kind;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, WatchParams,
};
use kube::core::WatchEvent as KubeEvent;
use kube::{Client, Error as KubeError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::convert::{
    self, MANAGED_BY, MANAGED_BY_LABEL, api_resource, from_kube, is_native, is_terminating,
};
use crate::crd::CRD_KINDS;
use crate::finalizer::FUNCTION_FINALIZER;

/// How often a write without a precondition is tried when it keeps getting 409 Conflict
/// (someone else wrote in between our read and our write), with a short random pause between
/// tries ([`conflict_pause`]) so that writers racing for one object stop colliding.
const CONFLICT_RETRIES: usize = 16;
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
    /// Events each watch stream buffers before its Kubernetes watch waits for the consumer.
    watch_buffer: usize,
    /// Shared by every clone: when the last clone is dropped, every watch this store started
    /// ends (their tasks hold the client, not this), as with the other stores.
    handles: Arc<Handles>,
}

/// What the clones of one [`KubeStore`] share.
#[derive(Debug, Default)]
struct Handles {
    /// Cancelled when the last clone goes.
    dropped: CancellationToken,
    /// The newest resource version this store has read or written: where a watch from "now"
    /// starts (see [`Store::watch`] in the module doc).
    newest: AtomicU64,
}

impl Drop for Handles {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
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

fn terminating(kind: Kind, namespace: &str, name: &str) -> StoreError {
    StoreError::Terminating {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// Whether a 409 on create means the name is held by an object being deleted: Kubernetes
/// answers `AlreadyExists` with its message prefixed "object is being deleted: ".
fn is_being_deleted(e: &KubeError) -> bool {
    matches!(e, KubeError::Api(status) if status.code == 409 && status.message.contains("being deleted"))
}

impl KubeStore {
    /// A store on this client (in a cluster: `Client::try_default()`; tests: a mock service).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            watch_buffer: WATCH_BUFFER,
            handles: Arc::default(),
        }
    }

    /// A store whose watch streams buffer `options.watch_buffer` events. The history a watch
    /// can resume from (`options.event_history`) is the API server's (its watch cache and
    /// etcd's compaction), so that option has no effect here.
    pub fn with_options(client: Client, options: StoreOptions) -> Self {
        Self {
            watch_buffer: options.watch_buffer.max(1),
            ..Self::new(client)
        }
    }

    /// Records a resource version this store read or wrote.
    fn saw(&self, version: u64) {
        self.handles.newest.fetch_max(version, Ordering::SeqCst);
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

    /// The object unless it is absent or being deleted (see the module doc).
    async fn get_live(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, StoreError> {
        Ok(self
            .get_raw(kind, namespace, name)
            .await?
            .filter(|o| !is_terminating(o)))
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
        let mut object = convert::to_kube(kind, value, None)?;
        if kind == Kind::Function {
            // Closes the window before the finalizer controller adds it itself: a Function
            // deleted right after its creation still gets its instances cleaned up.
            object.metadata.finalizers = Some(vec![FUNCTION_FINALIZER.to_string()]);
        }
        let created = match self
            .api(kind, Some(namespace))
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(o) => o,
            Err(e) if is_being_deleted(&e) => return Err(terminating(kind, namespace, name)),
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
        from_kube(kind, &created).inspect(|o| self.saw(o.resource_version))
    }

    /// Replaces `current` (read just before) with `value` at `current`'s version, keeping the
    /// metadata Kappa's JSON does not carry (finalizers, owner references).
    async fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        value: &serde_json::Value,
        current: &DynamicObject,
    ) -> Result<StoredObject, KubeError> {
        let resource_version = convert::parse_rv(
            current.metadata.resource_version.as_deref(),
            &format!("{kind} {namespace}/{name}"),
        )
        .map_err(|e| KubeError::Service(Box::new(e)))?;
        let mut object = convert::to_kube(kind, value, Some(resource_version))
            .map_err(|e| KubeError::Service(Box::new(e)))?;
        convert::keep_cluster_metadata(&mut object, current);
        let replaced = self
            .api(kind, Some(namespace))
            .replace(name, &PostParams::default(), &object)
            .await?;
        from_kube(kind, &replaced)
            .inspect(|o| self.saw(o.resource_version))
            .map_err(|e| KubeError::Service(Box::new(e)))
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
        self.get_live(kind, namespace, name)
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
            .filter(|o| !is_terminating(o))
            .map(|o| from_kube(kind, o))
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.saw(resource_version);
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
                // Read first: the replacement must carry the finalizers and owner references
                // on the object now, and a version that already differs needs no PUT.
                let current = self
                    .get_live(kind, &namespace, &name)
                    .await?
                    .ok_or_else(|| not_found(kind, &namespace, &name))?;
                let actual = convert::parse_rv(
                    current.metadata.resource_version.as_deref(),
                    &format!("{kind} {namespace}/{name}"),
                )?;
                if actual != expected {
                    return Err(StoreError::Conflict {
                        kind,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        expected,
                        actual,
                    });
                }
                match self
                    .replace(kind, &namespace, &name, &value, &current)
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
                    if current.as_ref().is_some_and(is_terminating) {
                        return Err(if precondition == Precondition::MustExist {
                            not_found(kind, &namespace, &name)
                        } else {
                            terminating(kind, &namespace, &name)
                        });
                    }
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
                    match self
                        .replace(kind, &namespace, &name, &value, &current)
                        .await
                    {
                        Ok(stored) => return Ok(stored),
                        Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                            tracing::debug!(kind = %kind, namespace, name, attempt, "write conflict; retrying");
                            last = Some(rv);
                            conflict_pause(attempt).await;
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
        let mut attempt = 0;
        loop {
            let mut object = self
                .get_live(kind, namespace, name)
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
                .write_status(kind, namespace, name, object, status.clone())
                .await
            {
                Ok(o) => return from_kube(kind, &o).inspect(|s| self.saw(s.resource_version)),
                // Without a caller precondition, a write in between is no conflict: read again.
                Err(e)
                    if status_code(&e).is_some_and(|(code, _)| code == 409)
                        && !matches!(precondition, Precondition::ResourceVersion(_))
                        && attempt + 1 < CONFLICT_RETRIES =>
                {
                    tracing::debug!(kind = %kind, namespace, name, attempt, "status write conflict; retrying");
                    conflict_pause(attempt).await;
                    attempt += 1;
                }
                Err(e) if status_code(&e).is_some_and(|(code, _)| code == 409) => {
                    return Err(StoreError::Conflict {
                        kind,
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        expected: current,
                        actual: self.actual_version(kind, namespace, name).await,
                    });
                }
                Err(e) => return Err(map_write_error(kind, namespace, name, e)),
            }
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
            .get_live(kind, namespace, name)
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
            Ok(answer) => match answer.left() {
                // The object, kept for its finalizers (or from a server that answers with it):
                // its state and version are the deletion's.
                Some(object) => from_kube(kind, &object).inspect(|o| self.saw(o.resource_version)),
                // Removed at once: the API answers with a Status, which names no version, so
                // the deletion's version is read afterwards (exact unless another write came
                // in between; never older than the deletion, which read-your-writes needs).
                None => Ok(self.deleted_at_current_version(last).await),
            },
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
        let (tx, mut rx) = mpsc::channel(self.watch_buffer);
        // The tasks hold a copy with handles of its own: dropping every clone of this store
        // cancels `end.stop`, which ends them (as does a Gone: one per stream).
        let end = WatchEnd {
            stop: self.handles.dropped.child_token(),
            gone_sent: Arc::new(AtomicBool::new(false)),
        };
        // "Now" for `since: None`, taken at the call: the newest version this store has seen.
        let newest = self.handles.newest.load(Ordering::SeqCst);
        let this = Arc::new(KubeStore {
            client: self.client.clone(),
            watch_buffer: self.watch_buffer,
            handles: Arc::default(),
        });
        tokio::spawn(async move {
            let start = match since {
                Some(v) => v,
                None if newest > 0 => newest,
                None => {
                    let current = tokio::select! {
                        () = end.stop.cancelled() => return,
                        v = this.current_version() => v,
                    };
                    match current {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            };
            let tasks: Vec<_> = kinds
                .into_iter()
                .map(|kind| {
                    let this = Arc::clone(&this);
                    let tx = tx.clone();
                    let end = end.clone();
                    tokio::spawn(async move { this.watch_kind(kind, start, tx, end).await })
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
        let version = convert::parse_rv(
            list.metadata.resource_version.as_deref(),
            "the list of functions",
        )?;
        self.saw(version);
        Ok(version)
    }
}

type EventSender = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// What ends the per-kind watches of one [`Store::watch`] stream.
#[derive(Debug, Clone)]
struct WatchEnd {
    /// Cancelled when the store is dropped or one kind's watch got Gone.
    stop: CancellationToken,
    /// Whether the stream's one Gone was sent (every kind's watch may get a 410).
    gone_sent: Arc<AtomicBool>,
}

impl WatchEnd {
    /// Ends the stream with Gone: sent once, whichever kind's watch got the 410 first.
    async fn gone(&self, tx: &EventSender, requested: u64, message: &str) {
        self.stop.cancel();
        if !self.gone_sent.swap(true, Ordering::SeqCst) {
            let _ = tx.send(Err(gone(requested, message))).await;
        }
    }
}

impl KubeStore {
    /// The store's answer to a delete the API server answered with a Status: `last` at the
    /// version the store is at now (at or after the deletion).
    async fn deleted_at_current_version(&self, mut last: StoredObject) -> StoredObject {
        match self.current_version().await {
            Ok(version) => {
                last.resource_version = version;
                last.value["metadata"]["resourceVersion"] =
                    serde_json::Value::String(version.to_string());
            }
            Err(e) => {
                tracing::warn!(kind = %last.kind, namespace = %last.namespace, name = %last.name, error = %e, "deleted, but the deletion's version could not be read; answering with the version read before");
            }
        }
        last
    }

    /// Watches one kind from `since`, re-opening the watch from the last version seen (events
    /// and bookmarks) whenever the server ends it, until Gone, an error, the consumer leaves
    /// or `end.stop` is cancelled.
    async fn watch_kind(&self, kind: Kind, since: u64, tx: EventSender, end: WatchEnd) {
        let api = self.api(kind, None);
        // Bookmarks are on by default: they advance `version` while nothing changes.
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if is_native(kind) {
            params = params.labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        }
        let mut version = since;
        let mut failures = 0u32;
        let mut deletions = Deletions::default();
        loop {
            let from = version.to_string();
            let opened = tokio::select! {
                () = end.stop.cancelled() => return,
                () = tx.closed() => return,
                opened = api.watch(&params, &from) => opened,
            };
            let stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    if let KubeError::Api(status) = &e
                        && status.code == 410
                    {
                        end.gone(&tx, version, &status.message).await;
                        return;
                    }
                    failures += 1;
                    if failures > 5 {
                        let _ = tx
                            .send(Err(backend(&format!("watching {}", kind.plural()), e)))
                            .await;
                        return;
                    }
                    tokio::select! {
                        () = end.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(200 << failures.min(5))) => {}
                    }
                    continue;
                }
            };
            failures = 0;
            let mut stream = std::pin::pin!(stream.into_stream());
            loop {
                let item = tokio::select! {
                    () = end.stop.cancelled() => return,
                    () = tx.closed() => return, // the consumer left
                    item = stream.next() => item,
                };
                let Some(item) = item else {
                    break;
                };
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
                        end.gone(&tx, version, &status.message).await;
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
                let event_type = deletions.event_type(event_type, &object);
                let object = match from_kube(kind, &object) {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                version = version.max(object.resource_version);
                let Some(event_type) = event_type else {
                    continue; // already reported as deleted
                };
                let sent = tokio::select! {
                    () = end.stop.cancelled() => return,
                    sent = tx.send(Ok(WatchEvent { event_type, object })) => sent,
                };
                if sent.is_err() {
                    return; // the consumer left
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

/// The objects of one watch whose deletion was reported when their deletionTimestamp
/// appeared, so that nothing more is reported for them (see the module doc). Entries go when
/// the object is finally removed, so the set is bounded by the objects being deleted.
#[derive(Debug, Default)]
struct Deletions {
    reported: HashSet<(String, String)>,
}

impl Deletions {
    /// What to report for a Kubernetes event: `None` for nothing.
    fn event_type(&mut self, event_type: EventType, object: &DynamicObject) -> Option<EventType> {
        let key = (
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        match event_type {
            // Removed. If it carried a deletionTimestamp, its deletion was reported when that
            // appeared: by this watch (in the set), or before this watch's start version (the
            // consumer saw it then, or listed after it and never saw the object at all).
            EventType::Deleted => {
                let reported = self.reported.remove(&key);
                (!reported && !is_terminating(object)).then_some(EventType::Deleted)
            }
            _ if is_terminating(object) => self.reported.insert(key).then_some(EventType::Deleted),
            other => {
                self.reported.remove(&key);
                Some(other)
            }
        }
    }
}

/// A short random pause before trying again a write that lost a race for an object: up to
/// 2^`attempt` ms (at most 64 ms), random so that the writers that collided spread out.
async fn conflict_pause(attempt: usize) {
    use std::hash::{BuildHasher, Hasher};
    let cap = 1u64 << attempt.min(6);
    // A fresh `RandomState` is randomly keyed: a random number without a dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    tokio::time::sleep(Duration::from_millis(random % (cap + 1))).await;
}

/// The store's Gone for a watch from `requested` answered with 410. The watch cache's
/// message, "too old resource version: N (M)", says M + 1 is the oldest version it still has;
/// etcd's own ("required revision has been compacted") names none, and `oldest` is then 0.
fn gone(requested: u64, message: &str) -> StoreError {
    let oldest = message
        .strip_prefix("too old resource version: ")
        .and_then(|rest| rest.split_once('('))
        .and_then(|(_, m)| m.trim_end_matches(')').trim().parse::<u64>().ok())
        .map_or(0, |m| m + 1);
    StoreError::Gone { requested, oldest }
}
