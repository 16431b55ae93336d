//! A typed watch cache: the one list/watch/re-list loop every consumer of the store uses (the
//! router's route table, the pool manager's cache, the trigger manager, the builder).
//!
//! [`WatchCache::next`] lists the watched kinds, then watches from the listed version and yields
//! one [`CacheEvent`] per change, in resource-version order. When the watch asks for history the
//! store no longer keeps (`Gone`), fails or ends, the cache lists again and yields the whole set
//! once more ([`CacheEvent::Listed`]); a list that fails, or a watch that fails soon after it
//! started, waits a back-off first (doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`]).
//!
//! Items are typed: each stored object is decoded by the consumer's [`Decode`] (every
//! `kappa_types` resource implements it). An object that does not decode is logged (kind, key,
//! field and message) and treated as absent, never a panic: a change that makes an object
//! unreadable yields [`CacheEvent::Removed`] for it.
//!
//! The kinds are listed one after another, and the watch starts from the oldest of the listed
//! versions, so a few changes already in the list are replayed; the cache remembers the version
//! of every listed object and drops any change not newer than it, so a consumer sees each
//! change once. A store's watch yields each kind's changes in version order, so once a change
//! of a kind is newer than that kind's list, none of that kind can be a replay: the cache then
//! forgets that kind's versions (a cache holds nothing per object once its kinds have moved on,
//! which at 10,000 routes and functions is most of a consumer's memory for them).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use kappa_types::{Kind, Resource, Spec, ValidationError};
use tokio::time::Instant;

use crate::{EventType, Store, StoreError, StoredObject, WatchEvent, WatchStream};

/// The first wait after a failed list or a watch that failed soon after it started.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two lists; a watch that lasted this long resets the back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a consumer reads the stored objects of the kinds it watches.
pub trait Decode: Sized + Send + Sync + 'static {
    /// The kinds to list and watch.
    fn kinds() -> Vec<Kind>;

    /// The typed item for one stored object of one of [`Decode::kinds`].
    fn decode(object: StoredObject) -> Result<Self, ValidationError>;
}

impl<S: Spec> Decode for Resource<S> {
    fn kinds() -> Vec<Kind> {
        vec![S::KIND]
    }

    fn decode(object: StoredObject) -> Result<Self, ValidationError> {
        Self::from_json(object.value)
    }
}

/// A stored object's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An [`ObjectKey`] as the version map holds it: kind, and namespace and name in one
/// allocation (`ns_len` splits them, so two different keys never compare equal). Half the
/// size of an `ObjectKey` and one allocation instead of two, for every object every cache
/// watches (the router's cache alone holds one per route and per function).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VersionKey {
    kind: Kind,
    ns_len: u32,
    text: Box<str>,
}

impl VersionKey {
    fn of(key: &ObjectKey) -> Self {
        let mut text = String::with_capacity(key.namespace.len() + key.name.len());
        text.push_str(&key.namespace);
        text.push_str(&key.name);
        Self {
            kind: key.kind,
            // Names are bounded far below 4 GiB by validation; saturate rather than wrap.
            ns_len: u32::try_from(key.namespace.len()).unwrap_or(u32::MAX),
            text: text.into_boxed_str(),
        }
    }
}

/// One decoded object.
#[derive(Debug)]
pub struct Item<T> {
    pub key: ObjectKey,
    /// The version of the write that produced this state.
    pub resource_version: u64,
    pub value: Arc<T>,
}

impl<T> Clone for Item<T> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            resource_version: self.resource_version,
            value: Arc::clone(&self.value),
        }
    }
}

/// What changed, as the consumer should apply it.
#[derive(Debug)]
pub enum CacheEvent<T> {
    /// The store was listed (at start, or again after the watch fell behind or failed): every
    /// readable object of the watched kinds, ordered by kind, namespace and name. It replaces
    /// whatever the consumer held.
    Listed(Vec<Item<T>>),
    /// An object was created or changed.
    Applied(Item<T>),
    /// An object was deleted, or changed into one that does not decode.
    Removed(ObjectKey),
    /// The watch replayed changes the consumer already has (those a list already held, or the
    /// deletion of an object it never held): nothing to apply, but
    /// [`WatchCache::resource_version`] moved on to this version.
    Replayed(u64),
}

/// A list/watch loop over the kinds of `T`, yielding typed changes (see the module docs).
pub struct WatchCache<T> {
    store: Arc<dyn Store>,
    kinds: Vec<Kind>,
    /// Whether the decoded items are kept (see [`WatchCache::events_only`]).
    keep_items: bool,
    /// The version of every listed object, readable or not, to recognise replayed changes,
    /// for the kinds still in `replaying`. Keyed compactly ([`VersionKey`]).
    versions: HashMap<VersionKey, u64>,
    /// The kinds whose watch has not yet yielded a change newer than their list, with the
    /// list's version: only their changes can be replays.
    replaying: Vec<(Kind, u64)>,
    items: BTreeMap<ObjectKey, Item<T>>,
    /// The highest store version listed or received.
    seen: u64,
    /// The live watch, `None` when the next step is a list.
    stream: Option<WatchStream>,
    watch_started: Instant,
    /// When the next list may run (set after a failure).
    retry_at: Option<Instant>,
    backoff: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl<T: Decode> WatchCache<T> {
    /// A cache of `T`'s kinds in `store`; nothing is read until [`WatchCache::next`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            kinds: T::kinds(),
            keep_items: true,
            versions: HashMap::new(),
            replaying: Vec::new(),
            items: BTreeMap::new(),
            seen: 0,
            stream: None,
            watch_started: Instant::now(),
            retry_at: None,
            backoff: BACKOFF_MIN,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
        }
    }

    /// Keeps only the objects' versions, not the decoded items (the consumer holds them in its
    /// own form): [`WatchCache::items`] and [`WatchCache::get`] then find nothing.
    pub fn events_only(mut self) -> Self {
        self.keep_items = false;
        self
    }

    /// Other back-off bounds (tests shorten them).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self.backoff = min;
        self
    }

    /// The highest store version listed or received: every change of the watched kinds up to
    /// it has been yielded.
    pub fn resource_version(&self) -> u64 {
        self.seen
    }

    /// The current readable objects, ordered by kind, namespace and name.
    pub fn items(&self) -> impl Iterator<Item = &Item<T>> {
        self.items.values()
    }

    /// The current object with this key, if readable.
    pub fn get(&self, key: &ObjectKey) -> Option<&Item<T>> {
        self.items.get(key)
    }

    /// The next change: lists first (and again whenever the watch ends), then yields watched
    /// changes. Never ends; cancel-safe (a cancelled call loses no change).
    pub async fn next(&mut self) -> CacheEvent<T> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match self.list().await {
                    Ok(items) => return CacheEvent::Listed(items),
                    Err(error) => {
                        tracing::warn!(kinds = ?self.kinds, %error, retry_in_ms = self.backoff.as_millis() as u64, "listing the store failed");
                        self.back_off();
                        continue;
                    }
                }
            };
            let item = stream.next().await;
            if let Some(event) = self.handle(item) {
                return event;
            }
        }
    }

    /// A change that has already arrived, without waiting; `None` when there is none (or the
    /// watch ended: the next [`WatchCache::next`] lists again). Never a
    /// [`CacheEvent::Listed`]. For consumers that apply a burst of changes at once.
    pub fn try_next(&mut self) -> Option<CacheEvent<T>> {
        loop {
            let item = self.stream.as_mut()?.next().now_or_never()?;
            if let Some(event) = self.handle(item) {
                return Some(event);
            }
        }
    }

    /// Drops the watch: the next [`WatchCache::next`] lists again, after the back-off (for a
    /// consumer that could not use what it was given, e.g. a build from the list that failed).
    pub fn relist(&mut self) {
        self.stream = None;
        self.back_off();
    }

    /// Lists every watched kind, replaces the held objects and opens the watch.
    async fn list(&mut self) -> Result<Vec<Item<T>>, StoreError> {
        let mut objects = Vec::new();
        let mut since = u64::MAX;
        let mut replaying = Vec::new();
        for kind in &self.kinds {
            let list = self.store.list(*kind, None).await?;
            since = since.min(list.resource_version);
            replaying.push((*kind, list.resource_version));
            objects.extend(list.items);
        }
        let since = if since == u64::MAX { 0 } else { since };
        self.retry_at = None;
        self.replaying = replaying;
        self.versions.clear();
        self.items.clear();
        let mut listed = BTreeMap::new();
        for object in objects {
            let key = key_of(&object);
            self.versions
                .insert(VersionKey::of(&key), object.resource_version);
            if let Some(item) = self.decode(key.clone(), object) {
                listed.insert(key, item);
            }
        }
        if self.keep_items {
            self.items = listed.clone();
        }
        self.seen = since;
        self.stream = Some(self.store.watch(&self.kinds, Some(since)));
        self.watch_started = Instant::now();
        Ok(listed.into_values().collect())
    }

    /// One item of the watch: the change it makes, if any; a failed or ended watch is dropped
    /// (the next step is a list).
    fn handle(&mut self, item: Option<Result<WatchEvent, StoreError>>) -> Option<CacheEvent<T>> {
        match item {
            Some(Ok(event)) => return self.apply(event),
            Some(Err(StoreError::Gone { requested, oldest })) => {
                tracing::info!(kinds = ?self.kinds, requested, oldest, "store history moved on; listing again");
            }
            Some(Err(error)) => {
                tracing::warn!(kinds = ?self.kinds, %error, "store watch failed; listing again");
            }
            None => {
                tracing::warn!(kinds = ?self.kinds, "store watch ended; listing again");
            }
        }
        self.stream = None;
        // A watch that failed soon after it started backs off before listing again.
        if self.watch_started.elapsed() < self.backoff_max {
            self.back_off();
        } else {
            self.backoff = self.backoff_min;
        }
        None
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.backoff_max);
    }

    fn apply(&mut self, event: WatchEvent) -> Option<CacheEvent<T>> {
        let object = event.object;
        let version = object.resource_version;
        let before = self.seen;
        self.seen = self.seen.max(version);
        let replayed = (self.seen > before).then_some(CacheEvent::Replayed(self.seen));
        if !self.kinds.contains(&object.kind) {
            return replayed;
        }
        let key = key_of(&object);
        if self.may_replay(object.kind, version) {
            let vkey = VersionKey::of(&key);
            if self
                .versions
                .get(&vkey)
                .is_some_and(|held| *held >= version)
            {
                return replayed;
            }
            match event.event_type {
                EventType::Deleted => {
                    if self.versions.remove(&vkey).is_none() {
                        return replayed;
                    }
                }
                EventType::Added | EventType::Modified => {
                    self.versions.insert(vkey, version);
                }
            }
        }
        match event.event_type {
            EventType::Deleted => {
                self.items.remove(&key);
                Some(CacheEvent::Removed(key))
            }
            EventType::Added | EventType::Modified => match self.decode(key.clone(), object) {
                Some(item) => {
                    if self.keep_items {
                        self.items.insert(key, item.clone());
                    }
                    Some(CacheEvent::Applied(item))
                }
                None => {
                    self.items.remove(&key);
                    Some(CacheEvent::Removed(key))
                }
            },
        }
    }

    /// Whether a change of `kind` at `version` may be one the list already held. The first
    /// change of a kind newer than its list ends its replay: its versions are dropped.
    fn may_replay(&mut self, kind: Kind, version: u64) -> bool {
        let Some(at) = self.replaying.iter().position(|(k, _)| *k == kind) else {
            return false;
        };
        if version <= self.replaying[at].1 {
            return true;
        }
        self.replaying.swap_remove(at);
        if self.replaying.is_empty() {
            self.versions = HashMap::new();
        } else {
            self.versions.retain(|k, _| k.kind != kind);
            self.versions.shrink_to_fit();
        }
        false
    }

    fn decode(&self, key: ObjectKey, object: StoredObject) -> Option<Item<T>> {
        let resource_version = object.resource_version;
        match T::decode(object) {
            Ok(value) => Some(Item {
                key,
                resource_version,
                value: Arc::new(value),
            }),
            Err(error) => {
                tracing::warn!(kind = %key.kind, namespace = %key.namespace, name = %key.name, field = %error.field, message = %error.message, "stored object does not parse; ignored");
                None
            }
        }
    }
}

fn key_of(object: &StoredObject) -> ObjectKey {
    ObjectKey {
        kind: object.kind,
        namespace: object.namespace.clone(),
        name: object.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, Precondition};
    use kappa_types::Function;
    use serde_json::json;

    fn function(name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "kappa.dev/v1",
            "kind": "Function",
            "metadata": {"name": name},
            "spec": {
                "environment": {"name": "python"},
                "package": {"packageref": {"name": name}},
            },
        })
    }

    /// Once a kind's watch has passed its list, the cache keeps nothing per object of it.
    #[tokio::test]
    async fn versions_are_dropped_once_the_watch_passes_the_list() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for name in ["a", "b"] {
            store
                .put(function(name), Precondition::None)
                .await
                .expect("put");
        }
        let mut cache = WatchCache::<Function>::new(Arc::clone(&store)).events_only();
        let CacheEvent::Listed(items) = cache.next().await else {
            panic!("the first event is a list");
        };
        assert_eq!(items.len(), 2);
        assert_eq!(cache.versions.len(), 2, "kept while a replay may come");
        store
            .put(function("c"), Precondition::None)
            .await
            .expect("put");
        let CacheEvent::Applied(item) = cache.next().await else {
            panic!("expected the new function");
        };
        assert_eq!(item.key.name, "c");
        assert!(cache.versions.is_empty() && cache.replaying.is_empty());
        // Changes and deletions still come through.
        let deleted = store
            .delete(Kind::Function, "default", "a", Precondition::None)
            .await
            .expect("delete");
        assert!(deleted.resource_version > item.resource_version);
        let CacheEvent::Removed(key) = cache.next().await else {
            panic!("expected the deletion");
        };
        assert_eq!(key.name, "a");
    }
}
