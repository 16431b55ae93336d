//! The typed watch cache (`WatchCache`) against both stores: it lists then yields changes in
//! version order, lists again when the store's history has moved past it (`Gone`), and skips an
//! object that does not decode (logged, yielded as removed) without stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use kappa_store::{
    CacheEvent, Decode, List, MemoryStore, ObjectKey, Precondition, RedbStore, Store, StoreError,
    StoreOptions, StoredObject, WatchCache, WatchStream,
};
use kappa_types::{Environment, Function, Kind, ValidationError};
use serde_json::{Value, json};
use tempfile::TempDir;

const PATIENCE: Duration = Duration::from_secs(30);

/// A store and what keeps it alive.
pub struct Made {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
}

pub fn memory(options: StoreOptions) -> Made {
    Made {
        store: Arc::new(MemoryStore::with_options(options)),
        _dir: None,
    }
}

pub fn redb(options: StoreOptions) -> Made {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open_with_options(dir.path().join("kappa.redb"), options).expect("open");
    Made {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

macro_rules! watch_cache_tests {
    ($module:ident, $make:path; $($check:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check($make).await;
                }
            )*
        }
    };
    ($($module:ident => $make:path),* $(,)?) => {
        $(
            watch_cache_tests!($module, $make;
                lists_then_yields_changes_in_order,
                lists_again_when_history_is_gone,
                an_unreadable_object_is_skipped_not_fatal,
                replayed_changes_are_yielded_once,
                failed_lists_and_watches_are_retried,
            );
        )*
    };
}

watch_cache_tests!(memory_store => super::memory, redb_store => super::redb);

fn function(name: &str, timeout: Value) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "environment": {"name": "python"},
            "package": {"packageref": {"name": name}},
            "functionTimeout": timeout,
        },
    })
}

fn environment(name: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"runtime": {"image": "python"}},
    })
}

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

/// Functions and environments in one watch, as a consumer of two kinds sees them.
#[derive(Debug)]
enum Watched {
    Function(Function),
    Environment(Environment),
}

impl Decode for Watched {
    fn kinds() -> Vec<Kind> {
        vec![Kind::Function, Kind::Environment]
    }

    fn decode(object: StoredObject) -> Result<Self, ValidationError> {
        match object.kind {
            Kind::Environment => Environment::decode(object).map(Self::Environment),
            _ => Function::decode(object).map(Self::Function),
        }
    }
}

async fn next<T: Decode>(cache: &mut WatchCache<T>) -> CacheEvent<T> {
    tokio::time::timeout(PATIENCE, cache.next())
        .await
        .expect("the cache yields an event")
}

fn listed_keys<T>(event: CacheEvent<T>) -> Vec<ObjectKey> {
    match event {
        CacheEvent::Listed(items) => items.into_iter().map(|i| i.key).collect(),
        other => panic!("expected a list, got {}", describe(&other)),
    }
}

fn describe<T>(event: &CacheEvent<T>) -> String {
    match event {
        CacheEvent::Listed(items) => format!("Listed({})", items.len()),
        CacheEvent::Applied(item) => format!("Applied({} @{})", item.key, item.resource_version),
        CacheEvent::Removed(key) => format!("Removed({key})"),
        CacheEvent::Replayed(version) => format!("Replayed({version})"),
    }
}

async fn lists_then_yields_changes_in_order(make: fn(StoreOptions) -> Made) {
    let made = make(StoreOptions::default());
    let store = &made.store;
    store
        .put(function("b", json!(5)), Precondition::None)
        .await
        .expect("put");
    store
        .put(function("a", json!(5)), Precondition::None)
        .await
        .expect("put");
    store
        .put(environment("python"), Precondition::None)
        .await
        .expect("put");
    let mut cache = WatchCache::<Watched>::new(Arc::clone(store));
    assert_eq!(
        listed_keys(next(&mut cache).await),
        vec![
            key(Kind::Environment, "python"),
            key(Kind::Function, "a"),
            key(Kind::Function, "b"),
        ],
        "a list is ordered by kind, namespace and name"
    );

    let c = store
        .put(function("c", json!(5)), Precondition::None)
        .await
        .expect("put");
    let a = store
        .put(function("a", json!(9)), Precondition::None)
        .await
        .expect("put");
    let deleted = store
        .delete(Kind::Environment, "default", "python", Precondition::None)
        .await
        .expect("delete");

    let CacheEvent::Applied(item) = next(&mut cache).await else {
        panic!("c created");
    };
    assert_eq!(
        (item.key.clone(), item.resource_version),
        (key(Kind::Function, "c"), c.resource_version)
    );
    let CacheEvent::Applied(item) = next(&mut cache).await else {
        panic!("a modified");
    };
    assert_eq!(item.key, key(Kind::Function, "a"));
    let Watched::Function(f) = item.value.as_ref() else {
        panic!("a is a function");
    };
    assert_eq!(f.spec.function_timeout, 9, "the item is the decoded object");
    assert_eq!(item.resource_version, a.resource_version);
    let CacheEvent::Removed(removed) = next(&mut cache).await else {
        panic!("python deleted");
    };
    assert_eq!(removed, key(Kind::Environment, "python"));
    assert_eq!(cache.resource_version(), deleted.resource_version);
    let held: Vec<ObjectKey> = cache.items().map(|i| i.key.clone()).collect();
    assert_eq!(
        held,
        vec![
            key(Kind::Function, "a"),
            key(Kind::Function, "b"),
            key(Kind::Function, "c")
        ]
    );
    assert!(cache.try_next().is_none(), "nothing else happened");
}

async fn lists_again_when_history_is_gone(make: fn(StoreOptions) -> Made) {
    // Two events of history and a one-event live buffer: a watcher that is not read while ten
    // writes land falls behind the history and gets `Gone`.
    let made = make(StoreOptions {
        event_history: 2,
        watch_buffer: 1,
    });
    let store = &made.store;
    let mut cache = WatchCache::<Function>::new(Arc::clone(store))
        .with_backoff(Duration::from_millis(1), Duration::from_millis(10));
    assert!(listed_keys(next(&mut cache).await).is_empty());
    for i in 0..10 {
        store
            .put(function(&format!("f{i}"), json!(5)), Precondition::None)
            .await
            .expect("put");
    }
    store
        .delete(Kind::Function, "default", "f0", Precondition::None)
        .await
        .expect("delete");
    let last = store.current_version().await.expect("version");
    let relisted = tokio::time::timeout(PATIENCE, async {
        loop {
            if let CacheEvent::Listed(items) = cache.next().await {
                return items;
            }
        }
    })
    .await
    .expect("the cache lists again after Gone");
    let names: Vec<String> = relisted.into_iter().map(|i| i.key.name).collect();
    assert_eq!(names, (1..10).map(|i| format!("f{i}")).collect::<Vec<_>>());
    assert!(cache.resource_version() <= last);
    // And it goes on watching from there.
    let g = store
        .put(function("g", json!(5)), Precondition::None)
        .await
        .expect("put");
    let item = tokio::time::timeout(PATIENCE, async {
        loop {
            if let CacheEvent::Applied(item) = cache.next().await
                && item.key.name == "g"
            {
                return item;
            }
        }
    })
    .await
    .expect("a change after the new list");
    assert_eq!(item.resource_version, g.resource_version);
}

async fn an_unreadable_object_is_skipped_not_fatal(make: fn(StoreOptions) -> Made) {
    let made = make(StoreOptions::default());
    let store = &made.store;
    // The store does not validate specs: a timeout that is not a number is stored as written.
    store
        .put(function("bad", json!("soon")), Precondition::None)
        .await
        .expect("put");
    store
        .put(function("good", json!(5)), Precondition::None)
        .await
        .expect("put");
    let mut cache = WatchCache::<Function>::new(Arc::clone(store));
    assert_eq!(
        listed_keys(next(&mut cache).await),
        vec![key(Kind::Function, "good")],
        "the unreadable function is left out of the list"
    );
    store
        .put(function("good", json!("later")), Precondition::None)
        .await
        .expect("put");
    let CacheEvent::Removed(removed) = next(&mut cache).await else {
        panic!("a change to an unreadable object removes it");
    };
    assert_eq!(removed, key(Kind::Function, "good"));
    assert!(cache.get(&key(Kind::Function, "good")).is_none());
    store
        .put(function("bad", json!(7)), Precondition::None)
        .await
        .expect("put");
    let CacheEvent::Applied(item) = next(&mut cache).await else {
        panic!("a fixed object comes back");
    };
    assert_eq!(item.key, key(Kind::Function, "bad"));
    assert_eq!(item.value.spec.function_timeout, 7);
}

async fn replayed_changes_are_yielded_once(make: fn(StoreOptions) -> Made) {
    // Writes land while the cache lists its two kinds one after the other: whatever the list
    // already holds is not yielded again by the watch, whatever it missed is.
    let made = make(StoreOptions::default());
    let store = Arc::clone(&made.store);
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..200 {
                let value = if i % 2 == 0 {
                    function(&format!("f{}", i % 7), json!(i))
                } else {
                    environment(&format!("e{}", i % 5))
                };
                store.put(value, Precondition::None).await.expect("put");
            }
        })
    };
    let mut cache = WatchCache::<Watched>::new(Arc::clone(&store));
    let mut held: std::collections::BTreeMap<ObjectKey, u64> = Default::default();
    let CacheEvent::Listed(items) = next(&mut cache).await else {
        panic!("the first event is a list");
    };
    for item in items {
        held.insert(item.key, item.resource_version);
    }
    writer.await.expect("writer");
    let last = store.current_version().await.expect("version");
    while cache.resource_version() < last {
        match next(&mut cache).await {
            CacheEvent::Applied(item) => {
                let name = match item.value.as_ref() {
                    Watched::Function(f) => &f.metadata.name,
                    Watched::Environment(e) => &e.metadata.name,
                };
                assert_eq!(name, &item.key.name, "decoded as its own kind");
                let before = held.insert(item.key.clone(), item.resource_version);
                assert!(
                    before.is_none_or(|v| v < item.resource_version),
                    "{} yielded at {} after {before:?}",
                    item.key,
                    item.resource_version
                );
            }
            CacheEvent::Replayed(version) => {
                assert!(version <= last, "replays stay within what was written");
            }
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    for kind in [Kind::Function, Kind::Environment] {
        for object in store.list(kind, None).await.expect("list").items {
            let key = key(kind, &object.name);
            assert_eq!(held.get(&key), Some(&object.resource_version), "{key}");
        }
    }
}

/// A store whose first lists fail, and whose first watch fails at once.
struct Flaky {
    inner: Arc<dyn Store>,
    failing_lists: AtomicU32,
    failing_watches: AtomicU32,
    lists: AtomicU32,
}

#[async_trait]
impl Store for Flaky {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get(kind, namespace, name).await
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<List, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failing_lists
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StoreError::Backend("list failed (test)".into()));
        }
        self.inner.list(kind, namespace).await
    }

    async fn put(
        &self,
        value: Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.inner.put(value, precondition).await
    }

    async fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.inner
            .put_status(kind, namespace, name, status, precondition)
            .await
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.inner.delete(kind, namespace, name, precondition).await
    }

    fn watch(&self, kinds: &[Kind], since: Option<u64>) -> WatchStream {
        let failing = self
            .failing_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Box::pin(futures::stream::iter([Err(StoreError::Backend(
                "watch failed (test)".into(),
            ))]));
        }
        self.inner.watch(kinds, since)
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        self.inner.current_version().await
    }
}

async fn failed_lists_and_watches_are_retried(make: fn(StoreOptions) -> Made) {
    let made = make(StoreOptions::default());
    made.store
        .put(function("a", json!(5)), Precondition::None)
        .await
        .expect("put");
    let flaky = Arc::new(Flaky {
        inner: Arc::clone(&made.store),
        failing_lists: AtomicU32::new(3),
        failing_watches: AtomicU32::new(1),
        lists: AtomicU32::new(0),
    });
    let mut cache = WatchCache::<Function>::new(flaky.clone())
        .with_backoff(Duration::from_millis(1), Duration::from_millis(10));
    assert_eq!(
        listed_keys(next(&mut cache).await),
        vec![key(Kind::Function, "a")],
        "the list succeeds once the store answers"
    );
    assert_eq!(
        flaky.lists.load(Ordering::SeqCst),
        4,
        "three failed lists, then one"
    );
    // The first watch fails at once: the cache lists again (after its back-off) and goes on.
    assert_eq!(
        listed_keys(next(&mut cache).await),
        vec![key(Kind::Function, "a")]
    );
    assert_eq!(flaky.lists.load(Ordering::SeqCst), 5);
    made.store
        .put(function("b", json!(5)), Precondition::None)
        .await
        .expect("put");
    let CacheEvent::Applied(item) = next(&mut cache).await else {
        panic!("the change after the second list");
    };
    assert_eq!(item.key, key(Kind::Function, "b"));
}
