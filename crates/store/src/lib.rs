//! The store: where desired state lives. One trait, [`Store`], with get/list/put/delete and a
//! watch stream ordered by a global, monotonic resource version (like etcd's revision), so the
//! router and pool manager react to changes without polling.
//!
//! Implementations:
//! - [`RedbStore`]: the embedded default, one transactional file in the data directory
//!   (survives `kill -9`; every write is durable before it is acknowledged).
//! - [`MemoryStore`]: the same semantics in memory, for tests.
//!
//! The Kubernetes CRD store lives with the Kubernetes code, not here.
//!
//! The store stamps metadata: `uid` and `creationTimestamp` on create, `resourceVersion` on
//! every write, `generation` (1 on create, +1 whenever `spec` changes). It does not validate
//! specs: the API server does that before writing.
//!
//! The write rules (keying, preconditions, stamping) live in one place, `object.rs`, and the
//! watch machinery (event log replay, then live events, with no gap and no duplicate) in
//! `watch.rs`; both stores use them, so they behave identically. Every write is atomic: a write
//! that fails (precondition, invalid object, backend error) changes nothing, bumps no version and
//! emits no event.
//!
//! Consumers follow the store through [`WatchCache`] (`watch_cache.rs`): list, watch, list again
//! on `Gone`, typed items, back-off on errors.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use kappa_types::Kind;
use serde::{Deserialize, Serialize};

mod memory;
mod object;
mod redb_store;
mod watch;
mod watch_cache;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use watch_cache::{BACKOFF_MAX, BACKOFF_MIN, CacheEvent, Decode, Item, ObjectKey, WatchCache};

/// How many watch events a store keeps by default (see [`StoreOptions::event_history`]).
pub const DEFAULT_EVENT_HISTORY: u64 = 10_000;
/// Default capacity of the live watch channel (see [`StoreOptions::watch_buffer`]).
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// Tuning shared by both stores. The defaults suit production; tests shrink them to reach the
/// edges (history pruned, a watcher lagging) quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many of the most recent events the log keeps (at least 1). A watch from an older
    /// version gets [`StoreError::Gone`].
    pub event_history: u64,
    /// How many live events a watcher may fall behind (at least 1) before it has to catch up
    /// from the log instead; writers never wait for watchers.
    pub watch_buffer: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            event_history: DEFAULT_EVENT_HISTORY,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

impl StoreOptions {
    /// The options with zero values raised to 1.
    fn normalised(self) -> Self {
        Self {
            event_history: self.event_history.max(1),
            watch_buffer: self.watch_buffer.max(1),
        }
    }
}

/// One stored resource: its key, resource version and full JSON (`apiVersion`, `kind`,
/// `metadata`, `spec`, `status`), whose `metadata.resourceVersion` equals `resource_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The object's kind.
    pub kind: Kind,
    /// `metadata.namespace` (`default` when the object had none).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The version of the write that produced this state.
    pub resource_version: u64,
    /// The whole object as JSON.
    pub value: serde_json::Value,
}

/// A list result and the store's resource version at the time of the read; watch from it to see
/// every later change.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// The objects, ordered by namespace then name.
    pub items: Vec<StoredObject>,
    /// The store's version when the list was read.
    pub resource_version: u64,
}

/// What a write did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object (or its status) was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// A change. For `Deleted`, `object` is the last state with `resource_version` set to the
/// deletion's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The object after the change (before it, for `Deleted`).
    pub object: StoredObject,
}

/// A condition a write must meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there (create or replace).
    #[default]
    None,
    /// Create only: fail with `AlreadyExists` when present.
    MustNotExist,
    /// Update only, and only if the stored resource version is this one (`Conflict` otherwise;
    /// `NotFound` when absent).
    ResourceVersion(u64),
    /// Update only: fail with `NotFound` when absent.
    MustExist,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (or a precondition needed it to).
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `MustNotExist` and the object exists.
    #[error("{kind} {namespace}/{name} already exists")]
    AlreadyExists {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `ResourceVersion(expected)` and the stored object is at another version.
    #[error(
        "{kind} {namespace}/{name} was modified: expected resource version {expected}, found {actual}"
    )]
    Conflict {
        kind: Kind,
        namespace: String,
        name: String,
        expected: u64,
        actual: u64,
    },
    /// The name is still held by an object being deleted (a store whose deletions wait for
    /// cleanup, such as Kubernetes finalizers): create it again once the deletion finished.
    #[error(
        "{kind} {namespace}/{name} is still being deleted (its finalizers have not finished): create it again once it is gone"
    )]
    Terminating {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// The watch asked for history older than the store keeps: list again and watch from there.
    #[error("resource version {requested} is too old (oldest kept is {oldest}): list again")]
    Gone { requested: u64, oldest: u64 },
    /// The object is not a resource the store can key (missing kind or metadata.name...).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The storage itself failed (IO, a corrupt or locked file); the message names the step.
    #[error("store backend: {0}")]
    Backend(String),
}

/// A stream of changes, in resource-version order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// The store of desired state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The object with this key, if any.
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError>;

    /// Every object of `kind`, in one namespace or all, ordered by namespace then name.
    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<List, StoreError>;

    /// The objects of `kind` in `namespace` whose name starts with `prefix` (for example a
    /// function's kept versions, `hello.v`), ordered by name. The default lists the namespace
    /// and filters; the embedded stores read only the matching range of their ordered keys.
    async fn list_prefix(
        &self,
        kind: Kind,
        namespace: &str,
        prefix: &str,
    ) -> Result<List, StoreError> {
        let mut list = self.list(kind, Some(namespace)).await?;
        list.items.retain(|o| o.name.starts_with(prefix));
        Ok(list)
    }

    /// Creates or replaces the object `value` (its `kind`, `metadata.namespace` and
    /// `metadata.name` are the key) under `precondition`. `status` in `value` is ignored when
    /// the object exists (status is written with [`Store::put_status`]); on create it is kept.
    async fn put(
        &self,
        value: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError>;

    /// Replaces only `status` of an existing object; `generation` does not change.
    async fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError>;

    /// Deletes an object, returning its last state (`NotFound` when absent).
    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError>;

    /// Changes of the given kinds (all kinds when empty) with a resource version greater than
    /// `since`, in order: first those already recorded, then live ones. `since: None` means
    /// only changes after the call. Yields `Err(Gone)` once and ends if `since` is older than the
    /// retained history.
    fn watch(&self, kinds: &[Kind], since: Option<u64>) -> WatchStream;

    /// The current (latest) resource version.
    async fn current_version(&self) -> Result<u64, StoreError>;
}
