//! A restarted pool manager adopts the pods it finds (the mock API lists labelled pods) instead
//! of killing them: warm pods go back into their pool, specialized ones into the endpoint
//! index with their generation; pods of a function that no longer exists are deleted.

use std::sync::Arc;
use std::time::Duration;

use kappa_archive::ArchiveStore;
use kappa_core::{EndpointIndex, FunctionId};
use kappa_executor::{ExecutorConfig, PoolManager};
use kappa_kube::PodBackend;
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_test_support::eventually;
use kappa_types::{Environment, EnvironmentSpec, Function, FunctionSpec, Runtime};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::backend::{config, with_status};
use super::mock::{FakeApi, Reply, status};

fn pod(name: &str, ip: &str, labels: Value) -> Value {
    with_status(
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "fns", "labels": labels}}),
        true,
        ip,
    )
}

#[tokio::test]
async fn a_restarted_pool_manager_adopts_warm_and_specialized_pods() {
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
    let function = Function::new("hello", spec);
    store
        .put(function.to_json(), Precondition::MustNotExist)
        .await
        .unwrap();

    let base = |role: &str| {
        json!({"app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": role,
               "kappa.dev/environment": "python", "kappa.dev/environment-namespace": "default",
               "kappa.dev/env-generation": "1"})
    };
    let warm = pod("python-warm000001", "10.0.0.1", base("pool"));
    let mut labels = base("specialized");
    labels["kappa.dev/function"] = json!("hello");
    labels["kappa.dev/function-namespace"] = json!("default");
    labels["kappa.dev/generation"] = json!("1");
    let specialized = pod("python-spec000001", "10.0.0.2", labels.clone());
    labels["kappa.dev/function"] = json!("deleted-meanwhile");
    let orphan = pod("python-orph000001", "10.0.0.3", labels);
    let (client, api) = FakeApi::start(move |r| match r.method.as_str() {
        "GET" if r.path == "/api/v1/namespaces/fns/pods" => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "40"},
                   "items": [warm.clone(), specialized.clone(), orphan.clone()]}),
        ),
        "DELETE" => Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(500, "InternalError", "not expected in this test"),
    });
    let backend = Arc::new(PodBackend::new(client, config(), Some(Arc::clone(&store))));
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
        backend,
        Arc::clone(&index),
        archives,
        &mut registry,
    );
    let shutdown = CancellationToken::new();
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
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].instance_id, "python-spec000001");
    assert_eq!(endpoints[0].addr.to_string(), "10.0.0.2:8888");
    assert_eq!(endpoints[0].generation, 1);
    assert_eq!(endpoints[0].capacity, 4);
    // A warm request is admitted at once, with no call to anyone.
    assert!(index.entry(&hello).try_admit(1).is_some());

    let snapshot = manager.snapshot();
    assert_eq!(
        snapshot["pools"]["default/python"]["warm"],
        json!(["python-warm000001"]),
        "{snapshot}"
    );
    api.eventually(|r| r.method == "DELETE" && r.path.ends_with("/python-orph000001"))
        .await;
    shutdown.cancel();
    task.await.unwrap();
    let lines = api.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("POST")),
        "nothing new was created: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("DELETE") && !l.ends_with("python-orph000001")),
        "adopted pods were not killed (not even on shutdown): {lines:?}"
    );
}
