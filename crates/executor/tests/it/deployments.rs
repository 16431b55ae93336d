//! `newdeploy` through the `Deployments` seam: the pool manager sets replica counts from
//! misses, minScale and idleness, names its scale-down victims, applies a new revision on
//! every change, and indexes exactly the ready instances of the revision it applied.
//!
//! `FakeDeployments` plays the deployment controller: it converges "pods" to the replica
//! count (removing named victims first, replacing every pod on a new revision) and reports
//! them ready, or failed for a scripted entrypoint, as Kubernetes would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kappa_core::{
    BackendError, DeploymentEvent, DeploymentSpec, DeploymentStatus, Deployments, FunctionId,
    Instance, Provision, ProvisionError, Provisioner, ReadyInstance,
};
use kappa_store::Precondition;
use kappa_test_support::eventually;
use kappa_types::{ExecutorType, Function, Kind};
use tokio::sync::broadcast;

use crate::fake::Harness;

#[derive(Clone)]
struct Pod {
    id: String,
    revision: String,
    generation: i64,
    addr: SocketAddr,
    ready: bool,
}

#[derive(Default)]
struct World {
    specs: HashMap<FunctionId, DeploymentSpec>,
    pods: HashMap<FunctionId, Vec<Pod>>,
    /// `apply F rev N`, `scale F N [victims]`, `delete F`.
    calls: Vec<String>,
}

struct FakeDeployments {
    world: Mutex<World>,
    /// Entrypoints whose instances fail to load, with the message.
    failing: Mutex<HashMap<String, String>>,
    events: broadcast::Sender<DeploymentEvent>,
    port: AtomicU16,
}

impl FakeDeployments {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            world: Mutex::default(),
            failing: Mutex::default(),
            events: broadcast::channel(256).0,
            port: AtomicU16::new(30000),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.world.lock().unwrap().calls.clone()
    }

    fn pods(&self, f: &FunctionId) -> Vec<String> {
        let world = self.world.lock().unwrap();
        world
            .pods
            .get(f)
            .map(|p| p.iter().map(|p| p.id.clone()).collect())
            .unwrap_or_default()
    }

    fn spec(&self, f: &FunctionId) -> Option<DeploymentSpec> {
        self.world.lock().unwrap().specs.get(f).cloned()
    }

    /// The controller: pods of other revisions go, named victims go first, then pods are
    /// added or removed until the count matches.
    fn converge(&self, f: &FunctionId, victims: &[String]) {
        let mut events = Vec::new();
        {
            let mut world = self.world.lock().unwrap();
            let Some(spec) = world.specs.get(f).cloned() else {
                return;
            };
            let failing = self
                .failing
                .lock()
                .unwrap()
                .get(&spec.specialize.entrypoint)
                .cloned();
            let pods = world.pods.entry(f.clone()).or_default();
            pods.retain(|p| {
                let keep = p.revision == spec.revision;
                if !keep {
                    events.push(DeploymentEvent::Gone {
                        function: f.clone(),
                        id: p.id.clone(),
                    });
                }
                keep
            });
            let mut order: Vec<usize> = (0..pods.len()).collect();
            order.sort_by_key(|i| (!victims.contains(&pods[*i].id), std::cmp::Reverse(*i)));
            let excess = pods.len().saturating_sub(spec.replicas as usize);
            let mut remove: Vec<String> = order
                .into_iter()
                .take(excess)
                .map(|i| pods[i].id.clone())
                .collect();
            // Like a ReplicaSet, a pod that is not ready goes before any ready one.
            remove.sort_by_key(|id| pods.iter().any(|p| &p.id == id && p.ready));
            pods.retain(|p| {
                if remove.contains(&p.id) {
                    events.push(DeploymentEvent::Gone {
                        function: f.clone(),
                        id: p.id.clone(),
                    });
                    false
                } else {
                    true
                }
            });
            while pods.len() < spec.replicas as usize {
                let port = self.port.fetch_add(1, Ordering::Relaxed);
                let pod = Pod {
                    id: format!("{}-{port}", f.name),
                    revision: spec.revision.clone(),
                    generation: spec.generation,
                    addr: format!("127.0.0.1:{port}").parse().unwrap(),
                    ready: failing.is_none(),
                };
                events.push(match &failing {
                    None => DeploymentEvent::Ready(ready_of(f, &pod)),
                    Some(message) => DeploymentEvent::Failed {
                        function: f.clone(),
                        revision: spec.revision.clone(),
                        message: message.clone(),
                        detail: Some("Traceback ...".into()),
                    },
                });
                pods.push(pod);
            }
        }
        for event in events {
            let _ = self.events.send(event);
        }
    }
}

fn ready_of(f: &FunctionId, pod: &Pod) -> ReadyInstance {
    ReadyInstance {
        function: f.clone(),
        instance: Instance {
            id: pod.id.clone(),
            addr: pod.addr.into(),
            labels: Default::default(),
        },
        generation: pod.generation,
        revision: pod.revision.clone(),
    }
}

#[async_trait]
impl Deployments for FakeDeployments {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn apply(&self, spec: &DeploymentSpec) -> Result<(), BackendError> {
        {
            let mut world = self.world.lock().unwrap();
            world.calls.push(format!(
                "apply {} {} {}",
                spec.function.name, spec.revision, spec.replicas
            ));
            world.specs.insert(spec.function.clone(), spec.clone());
        }
        self.converge(&spec.function, &[]);
        Ok(())
    }

    async fn scale(
        &self,
        function: &FunctionId,
        replicas: u32,
        remove_first: &[String],
    ) -> Result<(), BackendError> {
        {
            let mut world = self.world.lock().unwrap();
            world.calls.push(format!(
                "scale {} {replicas} {remove_first:?}",
                function.name
            ));
            let spec = world
                .specs
                .get_mut(function)
                .ok_or_else(|| BackendError::NotFound(function.to_string()))?;
            spec.replicas = replicas;
        }
        self.converge(function, remove_first);
        Ok(())
    }

    async fn delete(&self, function: &FunctionId) -> Result<(), BackendError> {
        let pods = {
            let mut world = self.world.lock().unwrap();
            world.calls.push(format!("delete {}", function.name));
            world.specs.remove(function);
            world.pods.remove(function).unwrap_or_default()
        };
        for pod in pods {
            let _ = self.events.send(DeploymentEvent::Gone {
                function: function.clone(),
                id: pod.id,
            });
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<DeploymentStatus>, BackendError> {
        let world = self.world.lock().unwrap();
        Ok(world
            .specs
            .values()
            .map(|s| DeploymentStatus {
                function: s.function.clone(),
                revision: s.revision.clone(),
                replicas: s.replicas,
            })
            .collect())
    }

    async fn ready(&self) -> Result<Vec<ReadyInstance>, BackendError> {
        let world = self.world.lock().unwrap();
        Ok(world
            .pods
            .iter()
            .flat_map(|(f, pods)| pods.iter().filter(|p| p.ready).map(|p| ready_of(f, p)))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.events.subscribe()
    }
}

async fn start() -> (Harness, Arc<FakeDeployments>) {
    let deployments = FakeDeployments::new();
    let h = Harness::start_with(Some(deployments.clone())).await;
    h.env("python", 1).await;
    (h, deployments)
}

async fn newdeploy(h: &Harness, tweak: impl FnOnce(&mut kappa_types::FunctionSpec)) -> FunctionId {
    h.function("nd", "python", |s| {
        s.executor_type = ExecutorType::Newdeploy;
        tweak(s);
    })
    .await
}

#[tokio::test]
async fn misses_scale_the_deployment_up_to_max_scale() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| {
        s.max_scale = 2;
        s.requests_per_pod = 1;
    })
    .await;
    let generation = h.generation(&f).await;
    let mut permits = Vec::new();
    for _ in 0..2 {
        assert_eq!(
            h.manager.provision(&f, generation).await.unwrap(),
            Provision::Added
        );
        permits.push(h.index.get(&f).unwrap().try_admit(generation).unwrap());
    }
    assert_eq!(h.index.endpoints(&f).len(), 2);
    assert_eq!(d.pods(&f).len(), 2);
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::AtCapacity,
        "maxScale caps the deployment"
    );
    // The instances are the deployment's: the backend specialized none.
    assert!(h.specialized().is_empty());
    let spec = d.spec(&f).unwrap();
    assert_eq!(spec.replicas, 2);
    assert_eq!(spec.specialize.entrypoint, "nd.main");
    assert_eq!(spec.generation, generation);
    assert_eq!(spec.revision.len(), 16);
    let calls = d.calls();
    assert!(calls[0].starts_with("apply nd "), "{calls:?}");
    assert!(calls.iter().any(|c| c == "scale nd 2 []"), "{calls:?}");
}

#[tokio::test]
async fn min_scale_is_applied_without_requests() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| {
        s.min_scale = 2;
        s.max_scale = 3;
    })
    .await;
    eventually(Duration::from_secs(5), "two ready instances", || {
        h.index.endpoints(&f).len() == 2
    })
    .await;
    assert_eq!(d.spec(&f).unwrap().replicas, 2);
}

#[tokio::test(start_paused = true)]
async fn idle_instances_are_scaled_away_by_name_down_to_min_scale() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| {
        s.min_scale = 1;
        s.max_scale = 3;
        s.requests_per_pod = 1;
        s.idletimeout = 5;
    })
    .await;
    eventually(Duration::from_secs(10), "minScale instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    let generation = h.generation(&f).await;
    let mut permits = Vec::new();
    for _ in 0..3 {
        loop {
            if let Some(p) = h.index.get(&f).unwrap().try_admit(generation) {
                permits.push(p);
                break;
            }
            assert_eq!(
                h.manager.provision(&f, generation).await.unwrap(),
                Provision::Added
            );
        }
    }
    assert_eq!(d.pods(&f).len(), 3);
    // The busiest instance keeps working; the other two go idle.
    let busy = permits[0].endpoint().instance_id.clone();
    permits.truncate(1);
    eventually(Duration::from_secs(60), "scaled down to one", || {
        h.index.endpoints(&f).len() == 1 && d.pods(&f).len() == 1
    })
    .await;
    assert_eq!(d.pods(&f), vec![busy.clone()], "the busy instance stays");
    let scales: Vec<String> = d
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("scale nd 2 [\"") || c.starts_with("scale nd 1 [\""))
        .collect();
    assert_eq!(
        scales.len(),
        2,
        "one named victim per step down: {scales:?}"
    );
    for call in &scales {
        assert!(!call.contains(&busy), "the busy instance is never a victim");
    }
    drop(permits);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(d.pods(&f).len(), 1, "minScale is never scaled away");
}

#[tokio::test]
async fn a_new_generation_is_a_new_revision_and_old_instances_leave_the_index() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| s.min_scale = 1).await;
    eventually(Duration::from_secs(5), "first instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    let old = h.index.endpoints(&f)[0].instance_id.clone();
    let old_revision = d.spec(&f).unwrap().revision;
    let obj = h
        .store
        .get(Kind::Function, "default", "nd")
        .await
        .unwrap()
        .unwrap();
    let mut function = Function::from_json(obj.value).unwrap();
    function.spec.env.insert("GREETING".into(), "hello".into());
    h.store
        .put(function.to_json(), Precondition::None)
        .await
        .unwrap();
    let generation = h.generation(&f).await;
    eventually(
        Duration::from_secs(5),
        "an instance of the new revision",
        || {
            let endpoints = h.index.endpoints(&f);
            endpoints.len() == 1
                && endpoints[0].instance_id != old
                && endpoints[0].generation == generation
        },
    )
    .await;
    let spec = d.spec(&f).unwrap();
    assert_ne!(spec.revision, old_revision);
    assert_eq!(spec.specialize.env["GREETING"], "hello");
    assert_eq!(spec.replicas, 1, "the replica count carries over");
}

#[tokio::test]
async fn a_secret_change_is_a_new_revision() {
    let (h, d) = start().await;
    h.secret("creds", &[("token", "one")]).await;
    let f = newdeploy(&h, |s| {
        s.min_scale = 1;
        s.secrets = vec![kappa_types::NamedRef::new("creds")];
    })
    .await;
    eventually(Duration::from_secs(5), "first instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    let first = d.spec(&f).unwrap();
    assert_eq!(first.specialize.files[0].entries["token"], b"one");
    h.secret("creds", &[("token", "two")]).await;
    eventually(
        Duration::from_secs(5),
        "a revision with the new value",
        || {
            d.spec(&f)
                .is_some_and(|s| s.specialize.files[0].entries["token"] == b"two")
        },
    )
    .await;
    assert_ne!(d.spec(&f).unwrap().revision, first.revision);
    eventually(Duration::from_secs(5), "its instance indexed", || {
        let endpoints = h.index.endpoints(&f);
        endpoints.len() == 1 && d.pods(&f) == vec![endpoints[0].instance_id.clone()]
    })
    .await;
}

#[tokio::test]
async fn code_that_fails_to_load_is_reported_and_scaled_back() {
    let (h, d) = start().await;
    d.failing
        .lock()
        .unwrap()
        .insert("nd.main".into(), "ImportError: no module named x".into());
    let f = newdeploy(&h, |_| {}).await;
    let generation = h.generation(&f).await;
    let error = h.manager.provision(&f, generation).await.unwrap_err();
    match &error {
        ProvisionError::Specialize { message, detail } => {
            assert!(message.contains("ImportError"), "{message}");
            assert_eq!(detail.as_deref(), Some("Traceback ..."));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Within the back-off the same error is answered at once.
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap_err(),
        error
    );
    eventually(Duration::from_secs(5), "scaled back to zero", || {
        d.pods(&f).is_empty()
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let obj = h.store.get(Kind::Function, "default", "nd").await.unwrap();
        let recorded = obj.is_some_and(|o| {
            o.value["status"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("ImportError"))
        });
        if recorded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lastError not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deleted_function_deletes_its_deployment() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| s.min_scale = 1).await;
    eventually(Duration::from_secs(5), "instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    h.store
        .delete(Kind::Function, "default", "nd", Precondition::None)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "deployment deleted", || {
        d.calls().iter().any(|c| c == "delete nd") && h.index.endpoints(&f).is_empty()
    })
    .await;
    assert!(d.pods(&f).is_empty());
}

#[tokio::test]
async fn a_restarted_pool_manager_adopts_the_deployment_without_a_rollout() {
    let d = FakeDeployments::new();
    let first = Harness::start_with(Some(d.clone())).await;
    first.env("python", 0).await;
    let f = newdeploy(&first, |s| {
        s.min_scale = 1;
        s.max_scale = 3;
        s.requests_per_pod = 1;
    })
    .await;
    eventually(Duration::from_secs(5), "instance", || {
        first.index.endpoints(&f).len() == 1
    })
    .await;
    let generation = first.generation(&f).await;
    // Scale to 2 so the adopted replica count is not just minScale.
    let _permit = first.index.get(&f).unwrap().try_admit(generation).unwrap();
    assert_eq!(
        first.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let pods = d.pods(&f);
    assert_eq!(pods.len(), 2);
    let revision = d.spec(&f).unwrap().revision;
    let store = Arc::clone(&first.store);
    first.shutdown.cancel();
    eventually(
        Duration::from_secs(5),
        "the first pool manager stopped",
        || first.task.is_finished(),
    )
    .await;
    drop(first);

    // A second pool manager over the same store and deployments.
    let second = Harness::start_on(store, Some(d.clone())).await;
    eventually(Duration::from_secs(5), "both instances adopted", || {
        second.index.endpoints(&f).len() == 2
    })
    .await;
    // A whole reconcile pass of the second pool manager saw the adopted deployment.
    second.whole_pass().await;
    assert_eq!(d.pods(&f), pods, "no pod was replaced");
    let spec = d.spec(&f).unwrap();
    assert_eq!(spec.revision, revision, "the same revision");
    assert_eq!(spec.replicas, 2, "the replica count carries over");
}

#[tokio::test]
async fn a_deployment_deleted_behind_its_back_is_applied_again() {
    let (h, d) = start().await;
    let f = newdeploy(&h, |s| {
        s.max_scale = 2;
        s.requests_per_pod = 1;
    })
    .await;
    let generation = h.generation(&f).await;
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let _permit = h.index.get(&f).unwrap().try_admit(generation).unwrap();
    // Someone deletes the Deployment by hand.
    d.delete(&f).await.unwrap();
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let calls = d.calls();
    let applies = calls.iter().filter(|c| c.starts_with("apply nd ")).count();
    assert_eq!(applies, 2, "{calls:?}");
    assert_eq!(d.spec(&f).unwrap().replicas, 2);
}
