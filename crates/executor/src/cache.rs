//! A watch-fed copy of the Environments and Functions the pool manager reconciles, and of the
//! resource versions of Secrets and ConfigMaps (never their values), from which it tells when
//! a function's instances run with outdated configuration. Fed by the store's typed watch
//! cache (`kappa_store::WatchCache`): an object that does not parse is logged there and left
//! out (a change that makes one unreadable removes it here).

use kappa_core::{ConfigKind, FunctionId};
use kappa_store::{CacheEvent, Decode, Item, ObjectKey, Store, StoredObject, WatchCache};
use kappa_types::{Environment, Function, FunctionVersion, Kind, Package, ValidationError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A Secret or ConfigMap by kind and (namespace, name).
pub(crate) type ConfigRef = (ConfigKind, FunctionId);

/// Environments and functions by (namespace, name), as last seen in the store.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    inner: Mutex<Snapshot>,
    /// Woken after every applied change, so the reconcile loop reacts at once.
    pub(crate) changed: Notify,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) environments: HashMap<FunctionId, Arc<Environment>>,
    /// Functions, and the kept versions of functions as functions of their own (`hello.v3`,
    /// see [`version_as_function`]).
    pub(crate) functions: HashMap<FunctionId, Arc<Function>>,
    /// The code of each kept version (`hello.v3`), as the package it had then.
    pub(crate) version_packages: HashMap<FunctionId, Arc<Package>>,
    /// The resource version of every Secret and ConfigMap (values stay in the store).
    pub(crate) configs: HashMap<ConfigRef, u64>,
    /// Every change of a watched kind up to this store resource version is applied.
    pub(crate) watermark: u64,
    pub(crate) loaded: bool,
}

impl Snapshot {
    /// Whether a configuration read at resource version `read` is outdated: the cache holds a
    /// newer version, or has seen past `read` and no longer holds it (deleted). A cache that
    /// lags behind the read (the instance read the store directly, after the change) is not a
    /// reason to roll.
    pub(crate) fn config_outdated(&self, config: &ConfigRef, read: u64) -> bool {
        match self.configs.get(config) {
            Some(current) => *current > read,
            None => self.watermark >= read,
        }
    }
}

fn config_kind(kind: Kind) -> Option<ConfigKind> {
    match kind {
        Kind::Secret => Some(ConfigKind::Secret),
        Kind::ConfigMap => Some(ConfigKind::ConfigMap),
        _ => None,
    }
}

impl Cache {
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn function(&self, id: &FunctionId) -> Option<Arc<Function>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .functions
            .get(id)
            .cloned()
    }

    /// The package a kept version (`hello.v3`) runs, as it was at that version.
    pub(crate) fn version_package(&self, id: &FunctionId) -> Option<Arc<Package>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version_packages
            .get(id)
            .cloned()
    }

    pub(crate) fn environment(&self, id: &FunctionId) -> Option<Arc<Environment>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .environments
            .get(id)
            .cloned()
    }

    /// Follows the store (list, watch, list again when the watch falls behind or fails) until
    /// cancelled, waking the reconcile loop after every change.
    pub(crate) async fn run(&self, store: Arc<dyn Store>, shutdown: CancellationToken) {
        // The snapshot holds the objects: the watch cache keeps only their versions.
        let mut cache = WatchCache::<Watched>::new(store).events_only();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = cache.next() => event,
            };
            let watermark = cache.resource_version();
            {
                let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    CacheEvent::Listed(items) => {
                        let mut snapshot = Snapshot {
                            loaded: true,
                            ..Snapshot::default()
                        };
                        for item in items {
                            snapshot.insert(item);
                        }
                        *inner = snapshot;
                    }
                    CacheEvent::Applied(item) => inner.insert(item),
                    CacheEvent::Removed(key) => inner.remove(key),
                    CacheEvent::Replayed(_) => {}
                }
                inner.watermark = watermark;
            }
            self.changed.notify_waiters();
        }
    }
}

/// What the pool manager reads from the store.
#[derive(Debug, Clone)]
enum Watched {
    Environment(Environment),
    Function(Function),
    /// A kept version (`hello.v3`) as a function of its own, and the package it ran.
    Version(Box<(Function, Package)>),
    /// A Secret or ConfigMap: that it exists, at the item's resource version. Its values are
    /// never decoded here.
    Config,
}

impl Decode for Watched {
    fn kinds() -> Vec<Kind> {
        vec![
            Kind::Environment,
            Kind::Function,
            Kind::FunctionVersion,
            Kind::Secret,
            Kind::ConfigMap,
        ]
    }

    fn decode(object: StoredObject) -> Result<Self, ValidationError> {
        match object.kind {
            Kind::Environment => Environment::from_json(object.value).map(Self::Environment),
            Kind::FunctionVersion => {
                version_parts(object.value).map(|parts| Self::Version(Box::new(parts)))
            }
            Kind::Secret | Kind::ConfigMap => Ok(Self::Config),
            _ => Function::from_json(object.value).map(Self::Function),
        }
    }
}

impl Snapshot {
    fn insert(&mut self, item: Item<Watched>) {
        let ObjectKey {
            kind,
            namespace,
            name,
        } = item.key;
        let id = FunctionId::new(namespace, name);
        match Arc::unwrap_or_clone(item.value) {
            Watched::Environment(env) => {
                self.environments.insert(id, Arc::new(env));
            }
            Watched::Function(f) => {
                self.functions.insert(id, Arc::new(f));
            }
            Watched::Version(parts) => {
                let (f, p) = *parts;
                self.functions.insert(id.clone(), Arc::new(f));
                self.version_packages.insert(id, Arc::new(p));
            }
            Watched::Config => {
                if let Some(config) = config_kind(kind) {
                    self.configs.insert((config, id), item.resource_version);
                }
            }
        }
    }

    fn remove(&mut self, key: ObjectKey) {
        let id = FunctionId::new(key.namespace, key.name);
        match key.kind {
            Kind::Environment => {
                self.environments.remove(&id);
            }
            Kind::Function => {
                self.functions.remove(&id);
            }
            Kind::FunctionVersion => {
                self.functions.remove(&id);
                self.version_packages.remove(&id);
            }
            kind => {
                if let Some(config) = config_kind(kind) {
                    self.configs.remove(&(config, id));
                }
            }
        }
    }
}

/// A kept version (`hello.v3`) as a function of its own, named like the version, running the
/// version's snapshot, and the package its code was in at that version. Versions keep no
/// instances when idle (`minScale` 0): only traffic pinned to them starts some.
pub(crate) fn version_as_function(value: serde_json::Value) -> Option<(Function, Package)> {
    match version_parts(value) {
        Ok(parts) => Some(parts),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable function version");
            None
        }
    }
}

fn version_parts(value: serde_json::Value) -> Result<(Function, Package), ValidationError> {
    let version = FunctionVersion::from_json(value)?;
    let mut spec = version.spec.snapshot.clone();
    spec.min_scale = 0;
    let mut function = Function::new(&version.metadata.name, spec);
    function.metadata.namespace = version.metadata.namespace.clone();
    function.metadata.uid = version.metadata.uid.clone();
    function.metadata.generation = Some(version.metadata.generation.unwrap_or(1));
    function.metadata.creation_timestamp = version.metadata.creation_timestamp.clone();
    let pref = &version.spec.snapshot.package.packageref;
    let mut package = Package::new(
        &pref.name,
        kappa_types::PackageSpec {
            environment: version.spec.snapshot.environment.clone(),
            source: version.spec.source.clone(),
            deployment: version.spec.deployment.clone(),
            buildcmd: version.spec.buildcmd.clone(),
        },
    );
    package.metadata.namespace = pref.namespace.clone();
    Ok((function, package))
}
