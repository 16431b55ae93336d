//! [`MemoryStore`]: the store in memory, for tests. Same semantics as [`crate::RedbStore`]
//! (both apply writes through [`crate::object`] and watch through [`crate::watch`]); nothing
//! survives the process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use async_trait::async_trait;
use futures::future::BoxFuture;
use kappa_types::Kind;
use tokio::sync::broadcast;

use crate::object::{self, Change, ObjectKey};
use crate::watch::{self, EventLog, LogPage, Start};
use crate::{
    EventType, List, Precondition, Store, StoreError, StoreOptions, StoredObject, WatchEvent,
    WatchStream,
};

/// The store in memory. Cheap to clone: clones share the same data; watch streams end when the
/// last clone is dropped.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Objects, event log and version under one mutex: a write is one critical section (no
    /// `.await` inside), which is what makes it atomic and gives events their order.
    state: Mutex<State>,
    /// Committed events for live watchers; a broadcast channel because it never blocks the
    /// writer and lets each watcher detect when it fell behind.
    events: broadcast::Sender<WatchEvent>,
    options: StoreOptions,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<ObjectKey, StoredObject>,
    /// The last `options.event_history` events, oldest first, with consecutive versions.
    log: VecDeque<WatchEvent>,
    version: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with the default options.
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    /// An empty store with these options.
    pub fn with_options(options: StoreOptions) -> Self {
        let options = options.normalised();
        let (events, _) = broadcast::channel(options.watch_buffer);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                events,
                options,
            }),
        }
    }

    fn write(
        &self,
        key: &ObjectKey,
        change: Change,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        let mut state = self.inner.lock();
        let version = state.version.saturating_add(1);
        let event = object::apply(key, state.objects.get(key), change, precondition, version)?;
        match event.event_type {
            EventType::Deleted => {
                state.objects.remove(key);
            }
            EventType::Added | EventType::Modified => {
                state.objects.insert(key.clone(), event.object.clone());
            }
        }
        state.version = version;
        state.log.push_back(event.clone());
        let history = usize::try_from(self.inner.options.event_history).unwrap_or(usize::MAX);
        while state.log.len() > history {
            state.log.pop_front();
        }
        // Published under the lock so that watchers receive events in version order. An error
        // only means nobody is watching.
        let _ = self.inner.events.send(event.clone());
        Ok(event.object)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write: every fallible step
        // of a write happens before its first mutation, so the state is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventLog for Weak<Inner> {
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<LogPage>, StoreError>> {
        let page = self.upgrade().map(|inner| {
            let state = inner.lock();
            let oldest = state.log.front().map(|e| e.object.resource_version);
            let skip = oldest.map_or(0, |oldest| after.saturating_add(1).saturating_sub(oldest));
            let skip = usize::try_from(skip).unwrap_or(usize::MAX);
            LogPage {
                events: state.log.iter().skip(skip).take(limit).cloned().collect(),
                oldest,
            }
        });
        Box::pin(futures::future::ready(Ok(page)))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        let key = ObjectKey::new(kind, namespace, name);
        Ok(self.inner.lock().objects.get(&key).cloned())
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<List, StoreError> {
        let state = self.inner.lock();
        let start = ObjectKey::new(kind, namespace.unwrap_or(""), "");
        let items = state
            .objects
            .range(start..)
            .take_while(|(key, _)| {
                key.kind == kind && namespace.is_none_or(|ns| key.namespace == ns)
            })
            .map(|(_, object)| object.clone())
            .collect();
        Ok(List {
            items,
            resource_version: state.version,
        })
    }

    async fn list_prefix(
        &self,
        kind: Kind,
        namespace: &str,
        prefix: &str,
    ) -> Result<List, StoreError> {
        let state = self.inner.lock();
        let start = ObjectKey::new(kind, namespace, prefix);
        let items = state
            .objects
            .range(start..)
            .take_while(|(key, _)| {
                key.kind == kind && key.namespace == namespace && key.name.starts_with(prefix)
            })
            .map(|(_, object)| object.clone())
            .collect();
        Ok(List {
            items,
            resource_version: state.version,
        })
    }

    async fn put(
        &self,
        value: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        let (key, value) = object::normalise(value)?;
        self.write(&key, Change::Put { value }, precondition)
    }

    async fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            &ObjectKey::new(kind, namespace, name),
            Change::Status { status },
            precondition,
        )
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            &ObjectKey::new(kind, namespace, name),
            Change::Delete,
            precondition,
        )
    }

    fn watch(&self, kinds: &[Kind], since: Option<u64>) -> WatchStream {
        let state = self.inner.lock();
        let rx = self.inner.events.subscribe();
        let start = match since {
            Some(since) => Start::After(since),
            None => Start::Live(state.version),
        };
        drop(state);
        watch::stream(Box::new(Arc::downgrade(&self.inner)), rx, kinds, start)
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().version)
    }
}
