//! `PodBackend::watch_pods` against the stateful fake API server: pods are created by the
//! backend itself, a test "kubelet" writes their status through `/status` as the real one does,
//! and other clients delete them. What the pool manager hears is the backend's
//! `InstanceEvent::Exited` stream.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kappa_archive::ArchiveStore;
use kappa_core::{Backend, EndpointIndex, ExitReason, FunctionId, InstanceEvent, InstanceSpec};
use kappa_executor::{ExecutorConfig, PoolManager};
use kappa_kube::PodBackend;
use kappa_kube::pods::{Placement, pool_pod, specialized_labels};
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_types::{Environment, EnvironmentSpec, Function, FunctionSpec, Runtime};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::backend::config;
use super::fake_api::{FakeApiServer, FakeConfig};
use super::manifests::instance_spec;
use kappa_test_support::eventually;

const PODS: &str = "/api/v1/namespaces/fns/pods";

/// A fake at a realistic revision, with bookmarks rare enough not to move a watcher's version
/// behind the test's back.
fn server() -> FakeApiServer {
    FakeApiServer::new(FakeConfig {
        bookmark_interval: Duration::from_secs(3600),
        start_revision: 100,
        ..FakeConfig::default()
    })
}

/// What the kubelet reports for a pod whose containers run and are ready.
fn running(ip: &str) -> Value {
    json!({
        "phase": "Running", "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "runtime", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"running": {}}},
            {"name": "fetcher", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"running": {}}},
        ],
    })
}

/// The runtime container ended with `code` (`reason` as the kubelet says, e.g. `OOMKilled`).
fn terminated(ip: &str, code: i32, reason: &str) -> Value {
    json!({
        "phase": "Running", "podIP": ip,
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {"name": "runtime", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"terminated": {"exitCode": code, "reason": reason}}},
            {"name": "fetcher", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"running": {}}},
        ],
    })
}

/// Writes a pod's status through `/status`, as the kubelet does.
async fn kubelet(pods: &Api<Pod>, name: &str, status: Value) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap();
}

/// A ready pod created by the backend (the kubelet makes it ready while `create` waits).
async fn start_pod(server: &FakeApiServer, backend: &Arc<PodBackend>, id: &str, ip: &str) {
    let create = {
        let backend = Arc::clone(backend);
        let spec = instance_spec(id);
        tokio::spawn(async move { backend.create(spec).await })
    };
    let path = format!("{PODS}/{id}");
    eventually(
        Duration::from_secs(10),
        "the backend created the pod",
        || server.object(&path).is_some(),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "fns");
    kubelet(&pods, id, running(ip)).await;
    let instance = create.await.unwrap().unwrap();
    assert_eq!(instance.id, id);
}

/// The backend with its pod watch running.
async fn watching(server: &FakeApiServer) -> (Arc<PodBackend>, CancellationToken) {
    let backend = Arc::new(PodBackend::new(server.client(), config(), None));
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::clone(&backend).watch_pods(shutdown.clone()));
    eventually(Duration::from_secs(10), "the pod watch is open", || {
        server.open_watches() == 1
    })
    .await;
    (backend, shutdown)
}

async fn next_exit(events: &mut broadcast::Receiver<InstanceEvent>) -> (String, ExitReason) {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Ok(InstanceEvent::Exited { id, reason })) => (id, reason),
        other => panic!("expected an exit within 10 s, got {other:?}"),
    }
}

async fn delete_as_someone_else(server: &FakeApiServer, name: &str) {
    let pods: Api<Pod> = Api::namespaced(server.client(), "fns");
    pods.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_terminated_runtime_container_is_reported_once() {
    let server = server();
    let (backend, shutdown) = watching(&server).await;
    let mut events = backend.subscribe();
    start_pod(&server, &backend, "python-oom0000001", "10.0.0.1").await;
    start_pod(&server, &backend, "python-exit000001", "10.0.0.2").await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "fns");

    kubelet(
        &pods,
        "python-oom0000001",
        terminated("10.0.0.1", 137, "OOMKilled"),
    )
    .await;
    let (id, reason) = next_exit(&mut events).await;
    assert_eq!(id, "python-oom0000001");
    assert!(reason.oom_killed, "{reason:?}");
    assert_eq!(reason.code, Some(137));

    // More changes of the ended pod (the pod fails, then someone deletes it) are not exits.
    let mut failed = terminated("10.0.0.1", 137, "OOMKilled");
    failed["phase"] = json!("Failed");
    kubelet(&pods, "python-oom0000001", failed).await;
    delete_as_someone_else(&server, "python-oom0000001").await;

    kubelet(
        &pods,
        "python-exit000001",
        terminated("10.0.0.2", 3, "Error"),
    )
    .await;
    let (id, reason) = next_exit(&mut events).await;
    assert_eq!(
        id, "python-exit000001",
        "the next exit is the other pod's: nothing more for the first"
    );
    assert!(!reason.oom_killed);
    assert_eq!(reason.code, Some(3));
    shutdown.cancel();
}

#[tokio::test]
async fn deletions_by_others_are_exits_and_the_backends_own_are_not() {
    let server = server();
    let (backend, shutdown) = watching(&server).await;
    let mut events = backend.subscribe();
    start_pod(&server, &backend, "python-mine000001", "10.0.0.1").await;
    start_pod(&server, &backend, "python-evict00001", "10.0.0.2").await;

    backend
        .delete("python-mine000001", Duration::ZERO)
        .await
        .unwrap();
    assert!(
        server
            .object(&format!("{PODS}/python-mine000001"))
            .is_none()
    );
    delete_as_someone_else(&server, "python-evict00001").await;
    let (id, reason) = next_exit(&mut events).await;
    assert_eq!(
        id, "python-evict00001",
        "the backend's own deletion (seen first) was not an exit"
    );
    assert_eq!(reason, ExitReason::default());
    shutdown.cancel();
}

#[tokio::test]
async fn a_watch_answered_410_relists_and_keeps_reporting() {
    let server = server();
    let (backend, shutdown) = watching(&server).await;
    let mut events = backend.subscribe();
    start_pod(&server, &backend, "python-keep000001", "10.0.0.1").await;
    let lists = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == PODS && !r.is_watch())
            .count()
    };
    assert_eq!(lists(), 1);

    // Other writes move the revision past the pod watch's last event; then the history is
    // compacted and the server drops its watches: the re-watch from that event is too old.
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "kappa");
    for i in 0..3 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap();
        configmaps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    server.compact();
    server.end_watches();
    eventually(
        Duration::from_secs(10),
        "the pod watch got 410 and listed again",
        || lists() == 2,
    )
    .await;
    let rewatched = server
        .requests()
        .into_iter()
        .filter(|r| r.path == PODS && r.is_watch())
        .collect::<Vec<_>>();
    assert!(rewatched.len() >= 2, "{rewatched:?}");
    eventually(
        Duration::from_secs(10),
        "the pod watch is open again",
        || server.open_watches() == 1,
    )
    .await;

    // Still reporting.
    let pods: Api<Pod> = Api::namespaced(server.client(), "fns");
    kubelet(
        &pods,
        "python-keep000001",
        terminated("10.0.0.1", 1, "Error"),
    )
    .await;
    let (id, reason) = next_exit(&mut events).await;
    assert_eq!(id, "python-keep000001");
    assert_eq!(reason.code, Some(1));
    shutdown.cancel();
}

/// A pod left by an earlier pool manager: the pool pod of `id`, relabelled as specialized for
/// `function` when given, with the status the kubelet reports.
async fn leftover(server: &FakeApiServer, id: &str, function: Option<&str>, status: Value) {
    let spec = InstanceSpec {
        env_generation: 1,
        ..instance_spec(id)
    };
    let mut pod = pool_pod(&config().template, &spec, &Placement::default(), "token");
    if let Some(function) = function {
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.extend(specialized_labels(&FunctionId::new("default", function), 1));
    }
    let pods: Api<Pod> = Api::namespaced(server.client(), "fns");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    kubelet(&pods, id, status).await;
}

/// End to end through the real pool manager: a restarted one adopts the warm and specialized
/// pods it finds, deletes those of a function that is gone and those that ended, and hears of a
/// pod deleted by someone else through the pod watch, which takes it out of the index.
#[tokio::test]
async fn a_restarted_pool_manager_adopts_reaps_and_follows_the_pods() {
    let server = server();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let env = Environment::new(
        "python",
        EnvironmentSpec {
            runtime: Runtime {
                image: "python".into(),
                command: None,
            },
            poolsize: 1,
            ..EnvironmentSpec::default()
        },
    );
    store
        .put(env.to_json(), Precondition::MustNotExist)
        .await
        .unwrap();
    let mut spec = FunctionSpec::new("python", "hello", "hello.main");
    spec.requests_per_pod = 4;
    store
        .put(
            Function::new("hello", spec).to_json(),
            Precondition::MustNotExist,
        )
        .await
        .unwrap();
    leftover(&server, "python-warm000001", None, running("10.0.0.1")).await;
    leftover(
        &server,
        "python-spec000001",
        Some("hello"),
        running("10.0.0.2"),
    )
    .await;
    leftover(
        &server,
        "python-orph000001",
        Some("deleted-meanwhile"),
        running("10.0.0.3"),
    )
    .await;
    leftover(
        &server,
        "python-dead000001",
        None,
        terminated("10.0.0.4", 1, "Error"),
    )
    .await;

    let backend = Arc::new(PodBackend::new(
        server.client(),
        config(),
        Some(Arc::clone(&store)),
    ));
    let index = Arc::new(EndpointIndex::new());
    let dir = tempfile::tempdir().unwrap();
    let archives = Arc::new(ArchiveStore::open(dir.path().join("archives"), 1 << 20).unwrap());
    let mut registry = prometheus_client::registry::Registry::default();
    let manager = PoolManager::new(
        ExecutorConfig {
            reconcile_interval: Duration::from_millis(50),
            ..ExecutorConfig::default()
        },
        store,
        Arc::clone(&backend) as Arc<dyn Backend>,
        Arc::clone(&index),
        archives,
        &mut registry,
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::clone(&backend).watch_pods(shutdown.clone()));
    let task = {
        let manager = manager.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { manager.run(token, Duration::ZERO).await })
    };

    let hello = FunctionId::new("default", "hello");
    eventually(
        Duration::from_secs(10),
        "the specialized pod is back in the index",
        || !index.endpoints(&hello).is_empty(),
    )
    .await;
    let endpoints = index.endpoints(&hello);
    assert_eq!(endpoints[0].instance_id, "python-spec000001");
    assert_eq!(endpoints[0].addr.to_string(), "10.0.0.2:8888");
    assert_eq!(endpoints[0].capacity, 4);
    for gone in ["python-orph000001", "python-dead000001"] {
        let path = format!("{PODS}/{gone}");
        eventually(Duration::from_secs(10), gone, || {
            server.object(&path).is_none()
        })
        .await;
    }
    assert_eq!(
        manager.snapshot()["pools"]["default/python"]["warm"],
        json!(["python-warm000001"])
    );

    delete_as_someone_else(&server, "python-spec000001").await;
    eventually(
        Duration::from_secs(10),
        "the deleted pod left the index",
        || index.endpoints(&hello).is_empty(),
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    let created = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == PODS)
        .count();
    assert_eq!(
        created, 4,
        "only the test's pods: the warm pool was adopted, not refilled"
    );
    assert!(
        server
            .object(&format!("{PODS}/python-warm000001"))
            .is_some(),
        "adopted pods outlive the pool manager"
    );
}

#[tokio::test]
async fn a_pod_deleted_while_the_watch_relists_is_reported() {
    let server = server();
    let (backend, shutdown) = watching(&server).await;
    let mut events = backend.subscribe();
    start_pod(&server, &backend, "python-stay000001", "10.0.0.1").await;
    start_pod(&server, &backend, "python-gone000001", "10.0.0.2").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "kappa");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    // The watch ends and its history is gone; the pod goes before the backend lists again
    // (it waits a second after the 410).
    server.compact();
    server.end_watches();
    delete_as_someone_else(&server, "python-gone000001").await;
    let (id, _) = next_exit(&mut events).await;
    assert_eq!(id, "python-gone000001");
    shutdown.cancel();
}
