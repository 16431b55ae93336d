//! A `Backend` that starts nothing: instances are records, specialization outcomes are scripted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kappa_archive::ArchiveStore;
use kappa_core::{
    Backend, BackendError, EndpointIndex, ExitReason, FunctionId, Instance, InstanceEvent,
    InstanceSpec, SpecializeRequest,
};
use kappa_executor::{ExecutorConfig, PoolManager};
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_test_support::eventually;
use kappa_types::{
    Archive, Environment, EnvironmentSpec, Function, FunctionSpec, NamedRef, Package, PackageSpec,
    Runtime,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Calls {
    pub created: Vec<InstanceSpec>,
    pub specialized: Vec<(String, SpecializeRequest)>,
    pub deleted: Vec<String>,
}

pub struct FakeBackend {
    pub calls: Mutex<Calls>,
    pub live: Mutex<HashMap<String, Instance>>,
    /// Entrypoints whose specialization fails with this message.
    pub failing: Mutex<HashMap<String, String>>,
    /// Delay of each specialization.
    pub delay: Mutex<Duration>,
    events: broadcast::Sender<InstanceEvent>,
    port: AtomicU16,
}

impl FakeBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::default(),
            live: Mutex::default(),
            failing: Mutex::default(),
            delay: Mutex::new(Duration::from_millis(10)),
            events: broadcast::channel(64).0,
            port: AtomicU16::new(20000),
        })
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Simulates an instance dying on its own.
    pub fn kill(&self, id: &str, reason: ExitReason) {
        self.live.lock().unwrap().remove(id);
        let _ = self.events.send(InstanceEvent::Exited {
            id: id.to_string(),
            reason,
        });
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: InstanceSpec) -> Result<Instance, BackendError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let port = self.port.fetch_add(1, Ordering::Relaxed);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let instance = Instance {
            id: spec.id.clone(),
            addr: addr.into(),
            labels: spec.labels.clone(),
        };
        self.calls.lock().unwrap().created.push(spec);
        self.live
            .lock()
            .unwrap()
            .insert(instance.id.clone(), instance.clone());
        Ok(instance)
    }

    async fn specialize(
        &self,
        instance: &Instance,
        request: &SpecializeRequest,
    ) -> Result<(), BackendError> {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.calls
            .lock()
            .unwrap()
            .specialized
            .push((instance.id.clone(), request.clone()));
        if let Some(message) = self.failing.lock().unwrap().get(&request.entrypoint) {
            return Err(BackendError::Specialize {
                status: Some(500),
                message: message.clone(),
                detail: Some("Traceback ...".into()),
            });
        }
        Ok(())
    }

    async fn delete(&self, id: &str, _grace: Duration) -> Result<(), BackendError> {
        self.calls.lock().unwrap().deleted.push(id.to_string());
        if self.live.lock().unwrap().remove(id).is_none() {
            return Err(BackendError::NotFound(id.to_string()));
        }
        let _ = self.events.send(InstanceEvent::Exited {
            id: id.to_string(),
            reason: ExitReason::default(),
        });
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, BackendError> {
        Ok(self.live.lock().unwrap().values().cloned().collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    async fn shutdown(&self, _grace: Duration) {
        let ids: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
        for id in ids {
            let _ = self.delete(&id, Duration::ZERO).await;
        }
    }
}

/// A pool manager over a memory store and the fake backend, running until dropped.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub backend: Arc<FakeBackend>,
    pub index: Arc<EndpointIndex>,
    pub manager: PoolManager,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    /// The pool manager's metrics.
    pub registry: prometheus_client::registry::Registry,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A harness whose pool manager runs `newdeploy` functions through `deployments`.
    pub async fn start_with(deployments: Option<Arc<dyn kappa_core::Deployments>>) -> Self {
        Self::start_on(Arc::new(MemoryStore::new()), deployments).await
    }

    /// A harness over an existing store (a restarted pool manager).
    pub async fn start_on(
        store: Arc<dyn Store>,
        deployments: Option<Arc<dyn kappa_core::Deployments>>,
    ) -> Self {
        Self::start_configured(store, deployments, |_| {}).await
    }

    /// A harness whose pool manager's configuration `tweak` adjusts.
    pub async fn start_configured(
        store: Arc<dyn Store>,
        deployments: Option<Arc<dyn kappa_core::Deployments>>,
        tweak: impl FnOnce(&mut ExecutorConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = FakeBackend::new();
        let index = Arc::new(EndpointIndex::new());
        let archives = Arc::new(ArchiveStore::open(dir.path().join("archives"), 1 << 20).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        let mut config = ExecutorConfig {
            reconcile_interval: Duration::from_millis(100),
            ..ExecutorConfig::default()
        };
        tweak(&mut config);
        let manager = PoolManager::new(
            config,
            Arc::clone(&store),
            backend.clone(),
            Arc::clone(&index),
            archives,
            &mut registry,
        );
        if let Some(deployments) = deployments {
            manager.set_deployments(deployments);
        }
        let shutdown = CancellationToken::new();
        let task = {
            let manager = manager.clone();
            let token = shutdown.clone();
            tokio::spawn(async move { manager.run(token, Duration::ZERO).await })
        };
        Self {
            store,
            backend,
            index,
            manager,
            shutdown,
            task,
            registry,
            _dir: dir,
        }
    }

    /// Waits until a whole reconcile pass ran after this call (the pool manager saw everything
    /// done before it): the wait for "nothing happened", instead of a sleep.
    pub async fn whole_pass(&self) {
        let start = self.manager.reconcile_passes();
        eventually(Duration::from_secs(5), "a whole reconcile pass", || {
            self.manager.reconcile_passes() >= start + 2
        })
        .await;
    }

    pub async fn env(&self, name: &str, poolsize: u32) {
        let env = Environment::new(
            name,
            EnvironmentSpec {
                runtime: Runtime {
                    image: "python".into(),
                    command: None,
                },
                poolsize,
                ..EnvironmentSpec::default()
            },
        );
        self.store
            .put(env.to_json(), Precondition::None)
            .await
            .unwrap();
    }

    /// A function with a literal single-file package; `tweak` adjusts the spec.
    pub async fn function(
        &self,
        name: &str,
        env: &str,
        tweak: impl FnOnce(&mut FunctionSpec),
    ) -> FunctionId {
        let package = Package::new(
            name,
            PackageSpec {
                environment: NamedRef::new(env),
                source: None,
                deployment: Some(Archive {
                    literal: Some("ZGVmIG1haW4oKTogcmV0dXJuICdoaSc=".into()),
                    filename: Some("f.py".into()),
                    ..Archive::default()
                }),
                buildcmd: None,
            },
        );
        let mut pv = package.to_json();
        pv["status"] = serde_json::json!({"buildstatus": "none"});
        self.store.put(pv, Precondition::None).await.unwrap();
        let mut spec = FunctionSpec::new(env, name, &format!("{name}.main"));
        tweak(&mut spec);
        let f = Function::new(name, spec);
        self.store
            .put(f.to_json(), Precondition::None)
            .await
            .unwrap();
        FunctionId::new("default", name)
    }

    /// Writes Secret `name` with `data` (plain values; stored base64, as the API stores them).
    pub async fn secret(&self, name: &str, data: &[(&str, &str)]) {
        use base64::Engine as _;
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    base64::engine::general_purpose::STANDARD.encode(v).into(),
                )
            })
            .collect();
        let secret = serde_json::json!({
            "apiVersion": "kappa.dev/v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"data": data},
        });
        self.store.put(secret, Precondition::None).await.unwrap();
    }

    /// Writes ConfigMap `name` with `data`.
    pub async fn configmap(&self, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let config = serde_json::json!({
            "apiVersion": "kappa.dev/v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"data": data},
        });
        self.store.put(config, Precondition::None).await.unwrap();
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// The specialization requests the backend received, in order.
    pub fn specialized(&self) -> Vec<(String, SpecializeRequest)> {
        self.backend.calls.lock().unwrap().specialized.clone()
    }

    pub async fn generation(&self, id: &FunctionId) -> i64 {
        let obj = self
            .store
            .get(kappa_types::Kind::Function, &id.namespace, &id.name)
            .await
            .unwrap()
            .unwrap();
        obj.value["metadata"]["generation"].as_i64().unwrap_or(1)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
