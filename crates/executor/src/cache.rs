//! A watch-fed copy of the Environments and Functions the pool manager reconciles, and of the
//! resource versions of Secrets and ConfigMaps (never their values), from which it tells when
//! a function's instances run with outdated configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kappa_core::{ConfigKind, FunctionId};
use kappa_store::{EventType, Store, StoreError};
use kappa_types::{Environment, Function, FunctionVersion, Kind, Package};
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

    /// Lists then watches the store until cancelled, relisting when the watch falls behind.
    pub(crate) async fn run(&self, store: Arc<dyn Store>, shutdown: CancellationToken) {
        let kinds = [
            Kind::Environment,
            Kind::Function,
            Kind::FunctionVersion,
            Kind::Secret,
            Kind::ConfigMap,
        ];
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.relist(store.as_ref()).await {
                Ok(version) => {
                    backoff = Duration::from_millis(100);
                    let mut events = store.watch(&kinds, Some(version));
                    loop {
                        let next = tokio::select! {
                            () = shutdown.cancelled() => return,
                            next = events.next() => next,
                        };
                        match next {
                            Some(Ok(event)) => {
                                self.apply(
                                    event.event_type,
                                    event.object.kind,
                                    &event.object.namespace,
                                    &event.object.name,
                                    event.object.resource_version,
                                    event.object.value,
                                );
                                self.changed.notify_waiters();
                            }
                            Some(Err(StoreError::Gone { .. })) | None => break,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "store watch failed; relisting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing environments and functions failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn relist(&self, store: &dyn Store) -> Result<u64, StoreError> {
        let envs = store.list(Kind::Environment, None).await?;
        let fns = store.list(Kind::Function, None).await?;
        let versions = store.list(Kind::FunctionVersion, None).await?;
        let secrets = store.list(Kind::Secret, None).await?;
        let configmaps = store.list(Kind::ConfigMap, None).await?;
        let version = envs
            .resource_version
            .min(fns.resource_version)
            .min(versions.resource_version)
            .min(secrets.resource_version)
            .min(configmaps.resource_version);
        let mut snapshot = Snapshot {
            loaded: true,
            watermark: version,
            ..Snapshot::default()
        };
        for (kind, list) in [
            (ConfigKind::Secret, secrets),
            (ConfigKind::ConfigMap, configmaps),
        ] {
            for obj in list.items {
                snapshot.configs.insert(
                    (kind, FunctionId::new(obj.namespace, obj.name)),
                    obj.resource_version,
                );
            }
        }
        for obj in envs.items {
            if let Ok(env) = Environment::from_json(obj.value) {
                snapshot
                    .environments
                    .insert(FunctionId::new(obj.namespace, obj.name), Arc::new(env));
            }
        }
        for obj in fns.items {
            if let Ok(f) = Function::from_json(obj.value) {
                snapshot
                    .functions
                    .insert(FunctionId::new(obj.namespace, obj.name), Arc::new(f));
            }
        }
        for obj in versions.items {
            if let Some((f, p)) = version_as_function(obj.value) {
                let id = FunctionId::new(obj.namespace, obj.name);
                snapshot.functions.insert(id.clone(), Arc::new(f));
                snapshot.version_packages.insert(id, Arc::new(p));
            }
        }
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        self.changed.notify_waiters();
        Ok(version)
    }

    fn apply(
        &self,
        event: EventType,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: u64,
        value: serde_json::Value,
    ) {
        let id = FunctionId::new(namespace, name);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.watermark = inner.watermark.max(resource_version);
        if let Some(config) = config_kind(kind) {
            if event == EventType::Deleted {
                inner.configs.remove(&(config, id));
            } else {
                inner.configs.insert((config, id), resource_version);
            }
            return;
        }
        match (kind, event) {
            (Kind::Environment, EventType::Deleted) => {
                inner.environments.remove(&id);
            }
            (Kind::Environment, _) => match Environment::from_json(value) {
                Ok(env) => {
                    inner.environments.insert(id, Arc::new(env));
                }
                Err(e) => {
                    tracing::warn!(environment = %id, error = %e, "ignoring unreadable environment")
                }
            },
            (Kind::Function, EventType::Deleted) => {
                inner.functions.remove(&id);
            }
            (Kind::Function, _) => match Function::from_json(value) {
                Ok(f) => {
                    inner.functions.insert(id, Arc::new(f));
                }
                Err(e) => {
                    tracing::warn!(function = %id, error = %e, "ignoring unreadable function")
                }
            },
            (Kind::FunctionVersion, EventType::Deleted) => {
                inner.functions.remove(&id);
                inner.version_packages.remove(&id);
            }
            (Kind::FunctionVersion, _) => match version_as_function(value) {
                Some((f, p)) => {
                    inner.functions.insert(id.clone(), Arc::new(f));
                    inner.version_packages.insert(id, Arc::new(p));
                }
                None => tracing::warn!(version = %id, "ignoring unreadable function version"),
            },
            _ => {}
        }
    }
}

/// A kept version (`hello.v3`) as a function of its own, named like the version, running the
/// version's snapshot, and the package its code was in at that version. Versions keep no
/// instances when idle (`minScale` 0): only traffic pinned to them starts some.
pub(crate) fn version_as_function(value: serde_json::Value) -> Option<(Function, Package)> {
    let version = match FunctionVersion::from_json(value) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable function version");
            return None;
        }
    };
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
    Some((function, package))
}
