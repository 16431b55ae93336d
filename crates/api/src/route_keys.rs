//! The index of HttpTrigger routes that admission checks a new trigger against, so a create
//! looks up its own (host, path) instead of reading and decoding every trigger.
//!
//! Kept from two sources, both applying a trigger's state only when its resource version is
//! newer than the one held (so their order does not matter):
//! - the API's own writes, recorded under the write lock right after the store accepted them,
//!   so the next admission sees them (read-your-writes);
//! - a list-then-watch of the store ([`run`], started by [`crate::serve`]), for the initial
//!   state and for writes made by anything else.
//!
//! Until the first list has been applied (or after a watch failure, until the next list),
//! [`RouteKeys::check`] answers `None` and admission falls back to scanning every trigger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kappa_store::{EventType, Store, StoredObject};
use kappa_types::{HttpTriggerSpec, Kind};
use serde::Deserialize as _;
use tokio_util::sync::CancellationToken;

/// What a trigger's route is matched on: host (lower case, port ignored; `*` for any), path
/// (parameter names ignored: `/users/{id}` and `/users/{uid}` are the same route) and methods.
/// Kept compact (one allocation for host and path; the methods shared by every trigger with
/// the same list, which for most is the default `GET`), since the index holds one per trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteKey {
    /// `host`, a NUL, then `path` (neither holds a NUL): the index's slot, shared with it.
    slot: Arc<str>,
    methods: Arc<[Box<str>]>,
}

/// The method list of a trigger that names none or only `GET`: one allocation for all of them.
static GET_ONLY: std::sync::LazyLock<Arc<[Box<str>]>> =
    std::sync::LazyLock::new(|| Arc::from(vec![Box::<str>::from("GET")]));

impl RouteKey {
    pub fn of(spec: &HttpTriggerSpec) -> Self {
        let host = match &spec.host {
            None => "*".to_string(),
            Some(h) => {
                let h = h.to_ascii_lowercase();
                match h.rsplit_once(':') {
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                        name.to_string()
                    }
                    _ => h,
                }
            }
        };
        let raw = spec
            .prefix
            .as_deref()
            .or(spec.relativeurl.as_deref())
            .unwrap_or("/");
        let path = raw
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(inner) if inner.starts_with('*') => "{*}",
                    Some(_) => "{}",
                    None => seg,
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let methods: Vec<Box<str>> = spec
            .effective_methods()
            .into_iter()
            .map(|m| m.to_ascii_uppercase().into_boxed_str())
            .collect();
        let methods = if *methods == **GET_ONLY {
            Arc::clone(&GET_ONLY)
        } else {
            Arc::from(methods)
        };
        Self {
            slot: Arc::from(format!("{host}\0{path}")),
            methods,
        }
    }

    /// The first method both keys serve on the same host and path.
    pub fn overlap(&self, other: &RouteKey) -> Option<&str> {
        if self.slot != other.slot {
            return None;
        }
        self.methods
            .iter()
            .find(|m| other.methods.contains(m))
            .map(|m| &**m)
    }
}

/// A trigger: `namespace/name` (neither part holds a `/`), shared by both maps.
type Name = Arc<str>;

fn name_of(namespace: &str, name: &str) -> Name {
    Arc::from(format!("{namespace}/{name}"))
}

#[derive(Default)]
struct Indexed {
    /// Whether a list has been applied since the index was created or last failed.
    ready: bool,
    /// Every trigger's resource version, deleted ones included (so a late event about an
    /// older version is recognised), with its route key while it exists.
    triggers: HashMap<Name, (u64, Option<RouteKey>)>,
    /// (host, path) → the triggers routing it.
    routes: HashMap<Arc<str>, Names>,
}

/// The triggers on one (host, path): almost always one, held inline (no allocation of its
/// own); more only while conflicting triggers exist (created behind the API's back).
#[derive(Debug)]
enum Names {
    One(Name),
    Many(Box<[Name]>),
}

impl Names {
    fn as_slice(&self) -> &[Name] {
        match self {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        }
    }

    fn of(mut names: Vec<Name>) -> Option<Self> {
        match names.len() {
            0 => None,
            1 => names.pop().map(Names::One),
            _ => Some(Names::Many(names.into_boxed_slice())),
        }
    }
}

impl Indexed {
    fn unlink(&mut self, name: &Name, key: &RouteKey) {
        if let Some(names) = self.routes.get_mut(&key.slot) {
            let rest: Vec<Name> = names
                .as_slice()
                .iter()
                .filter(|n| *n != name)
                .cloned()
                .collect();
            match Names::of(rest) {
                Some(rest) => *names = rest,
                None => {
                    self.routes.remove(&key.slot);
                }
            }
        }
    }

    /// Sets a trigger's key (`None`: deleted or unreadable) as of `version`, unless the index
    /// holds a newer state.
    fn set(&mut self, name: Name, version: u64, key: Option<RouteKey>) {
        let old = match self.triggers.get(&name) {
            Some((held, _)) if *held >= version => return,
            Some((_, old)) => old.clone(),
            None => None,
        };
        if let Some(old) = &old {
            self.unlink(&name, old);
        }
        // Triggers sharing a slot share its text.
        let key = key.map(|mut key| {
            if let Some((slot, _)) = self.routes.get_key_value(&key.slot) {
                key.slot = Arc::clone(slot);
            }
            key
        });
        if let Some(key) = &key {
            let mut names: Vec<Name> = self
                .routes
                .get(&key.slot)
                .map(|n| n.as_slice().to_vec())
                .unwrap_or_default();
            names.push(Arc::clone(&name));
            if let Some(names) = Names::of(names) {
                self.routes.insert(Arc::clone(&key.slot), names);
            }
        }
        self.triggers.insert(name, (version, key));
    }
}

/// A trigger an admission found on the same route.
pub(crate) struct Clash {
    pub namespace: String,
    pub name: String,
    pub method: String,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct RouteKeys {
    inner: Mutex<Indexed>,
}

fn key_of(obj: &StoredObject) -> Option<RouteKey> {
    HttpTriggerSpec::deserialize(obj.value.get("spec")?)
        .ok()
        .map(|spec| RouteKey::of(&spec))
}

impl RouteKeys {
    fn lock(&self) -> MutexGuard<'_, Indexed> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than a stale entry, which the watch corrects.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a write the store accepted (`deleted`: the object's last state).
    pub fn record(&self, obj: &StoredObject, deleted: bool) {
        if obj.kind != Kind::HttpTrigger {
            return;
        }
        let key = if deleted { None } else { key_of(obj) };
        self.lock().set(
            name_of(&obj.namespace, &obj.name),
            obj.resource_version,
            key,
        );
    }

    /// The first other trigger serving `key` with a common method; `None` when the index is
    /// not loaded (the caller scans instead).
    pub fn check(&self, key: &RouteKey, namespace: &str, name: &str) -> Option<Option<Clash>> {
        let ix = self.lock();
        if !ix.ready {
            return None;
        }
        let Some(names) = ix.routes.get(&key.slot) else {
            return Some(None);
        };
        for n in names.as_slice() {
            let (n_namespace, n_name) = n.split_once('/').unwrap_or(("", n));
            if n_namespace == namespace && n_name == name {
                continue;
            }
            let Some((_, Some(other))) = ix.triggers.get(n) else {
                continue;
            };
            if let Some(method) = key.overlap(other) {
                return Some(Some(Clash {
                    namespace: n_namespace.to_string(),
                    name: n_name.to_string(),
                    method: method.to_string(),
                }));
            }
        }
        Some(None)
    }

    /// Applies a full list of the store's triggers and marks the index loaded.
    fn load(&self, list: &kappa_store::List) {
        let mut ix = self.lock();
        let mut present = std::collections::HashSet::new();
        for obj in &list.items {
            let name = name_of(&obj.namespace, &obj.name);
            present.insert(Arc::clone(&name));
            ix.set(name, obj.resource_version, key_of(obj));
        }
        // Triggers the list no longer has were deleted while nobody watched.
        let gone: Vec<Name> = ix
            .triggers
            .iter()
            .filter(|(n, (_, k))| k.is_some() && !present.contains(*n))
            .map(|(n, _)| Arc::clone(n))
            .collect();
        for n in gone {
            ix.set(n, list.resource_version, None);
        }
        ix.ready = true;
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps `keys` in step with the store until `shutdown` is cancelled: list, then watch from
/// the listed version; list again after a failed or ended watch.
pub(crate) async fn run(keys: Arc<RouteKeys>, store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let listed = tokio::select! {
            _ = shutdown.cancelled() => return,
            listed = store.list(Kind::HttpTrigger, None) => listed,
        };
        match listed {
            Ok(list) => {
                keys.load(&list);
                let mut stream = store.watch(&[Kind::HttpTrigger], Some(list.resource_version));
                loop {
                    let item = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(event)) => {
                            let deleted = event.event_type == EventType::Deleted;
                            keys.record(&event.object, deleted);
                            backoff = BACKOFF_MIN;
                        }
                        Some(Err(error)) => {
                            tracing::info!(%error, "route index watch failed; listing again");
                            break;
                        }
                        None => break,
                    }
                }
                keys.lock().ready = false;
            }
            Err(error) => {
                tracing::warn!(%error, "listing http triggers for the route index failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kappa_types::{FunctionReference, Resource};

    use super::*;

    fn trigger(host: Option<&str>, url: &str, methods: &[&str]) -> HttpTriggerSpec {
        HttpTriggerSpec {
            host: host.map(str::to_string),
            relativeurl: Some(url.into()),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            functionref: FunctionReference::name("f"),
            ..HttpTriggerSpec::default()
        }
    }

    #[test]
    fn route_keys_overlap() {
        let a = RouteKey::of(&trigger(None, "/users/{id}", &[]));
        let b = RouteKey::of(&trigger(None, "/users/{uid}", &["GET", "POST"]));
        assert_eq!(a.overlap(&b), Some("GET"));
        let c = RouteKey::of(&trigger(None, "/users/{id}", &["POST"]));
        assert_eq!(a.overlap(&c), None);
        let d = RouteKey::of(&trigger(Some("Example.com:8080"), "/users/{id}", &[]));
        let e = RouteKey::of(&trigger(Some("example.com"), "/users/{x}", &[]));
        assert_eq!(d.overlap(&e), Some("GET"));
        assert_eq!(a.overlap(&d), None);
    }

    #[test]
    fn newer_states_win_whatever_their_order() {
        let mut ix = Indexed {
            ready: true,
            ..Indexed::default()
        };
        let n = name_of("default", "t");
        let k1 = RouteKey::of(&trigger(None, "/a", &[]));
        let k2 = RouteKey::of(&trigger(None, "/b", &[]));
        ix.set(n.clone(), 5, Some(k1.clone()));
        ix.set(n.clone(), 4, Some(k2.clone()));
        assert!(ix.routes.contains_key("*\0/a"));
        ix.set(n.clone(), 6, Some(k2));
        assert!(!ix.routes.contains_key("*\0/a"));
        ix.set(n.clone(), 7, None);
        assert!(ix.routes.is_empty());
        ix.set(n, 6, Some(k1));
        assert!(
            ix.routes.is_empty(),
            "an older state after the deletion is ignored"
        );
    }

    /// The index follows writes made straight to the store (list, then watch), and the
    /// API's own writes as soon as they are recorded.
    #[tokio::test]
    async fn follows_the_store_and_recorded_writes() {
        use kappa_store::{MemoryStore, Precondition};

        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let put = |name: &str, url: &str| {
            let store = Arc::clone(&store);
            let value = Resource::new(name, trigger(None, url, &[])).to_json();
            async move { store.put(value, Precondition::None).await.unwrap() }
        };
        put("listed", "/listed/{id}").await;
        let keys = Arc::new(RouteKeys::default());
        let probe = |url: &str| RouteKey::of(&trigger(None, url, &["GET"]));
        assert!(
            keys.check(&probe("/listed/{x}"), "default", "new")
                .is_none(),
            "not loaded"
        );

        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&keys), Arc::clone(&store), shutdown.clone()));
        let clash_on = |url: &str| {
            keys.check(&probe(url), "default", "new")
                .flatten()
                .map(|c| c.name)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while clash_on("/listed/{x}").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the list was never applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(clash_on("/listed/{x}").as_deref(), Some("listed"));
        assert!(
            keys.check(&probe("/listed/{x}"), "default", "listed")
                .unwrap()
                .is_none(),
            "a trigger does not clash with itself"
        );

        // Written behind the API's back: seen through the watch.
        put("watched", "/watched").await;
        while clash_on("/watched").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch was never applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Recorded by the API right after its write: seen at once.
        let written = put("recorded", "/recorded").await;
        keys.record(&written, false);
        assert_eq!(clash_on("/recorded").as_deref(), Some("recorded"));
        let deleted = store
            .delete(Kind::HttpTrigger, "default", "recorded", Precondition::None)
            .await
            .unwrap();
        keys.record(&deleted, true);
        assert_eq!(clash_on("/recorded"), None);
        // The watch's late copy of the older write does not bring it back.
        keys.record(&written, false);
        assert_eq!(clash_on("/recorded"), None);

        shutdown.cancel();
        task.await.unwrap();
    }
}
