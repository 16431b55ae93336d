//! The pod backend's requests: create (and wait for Ready), reap (delete), list, exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kappa_core::{Backend, BackendError, InstanceEvent};
use kappa_kube::pods::{LABEL_ROLE, PodTemplate};
use kappa_kube::{PodBackend, PodBackendConfig};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::manifests::instance_spec;
use super::mock::{FakeApi, Reply, status, write_manifest};

/// The key of the pods' fetcher tokens in [`config`].
pub const FETCHER_KEY: &str = "platform-key";

pub fn config() -> PodBackendConfig {
    PodBackendConfig {
        template: PodTemplate {
            namespace: "fns".into(),
            fetcher_image: "registry.example/kappa:0.1.0".into(),
            created_by: "executor-0".into(),
            ..PodTemplate::default()
        },
        api_url: "http://kappa-api.kappa:8080".into(),
        api_token: Some("token-1".into()),
        fetcher_key: FETCHER_KEY.into(),
        ready_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(5),
        ..PodBackendConfig::default()
    }
}

/// A pod as the API returns it: `pod` with a status.
pub fn with_status(mut pod: Value, ready: bool, ip: &str) -> Value {
    pod["status"] = json!({
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        "containerStatuses": [
            {"name": "runtime", "ready": ready, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"running": {}}},
        ],
    });
    pod["metadata"]["resourceVersion"] = json!("10");
    pod
}

#[tokio::test]
async fn create_sends_the_pool_pod_and_waits_until_ready() {
    let created: Arc<std::sync::Mutex<Option<Value>>> = Arc::default();
    let gets = Arc::new(AtomicUsize::new(0));
    let (client, api) = {
        let created = Arc::clone(&created);
        let gets = Arc::clone(&gets);
        FakeApi::start(move |r| match r.method.as_str() {
            "POST" => {
                *created.lock().unwrap() = Some(r.body.clone());
                Reply::Json(201, r.body.clone())
            }
            "GET" => {
                let pod = created.lock().unwrap().clone().unwrap();
                let n = gets.fetch_add(1, Ordering::SeqCst);
                Reply::Json(200, with_status(pod, n >= 2, "10.1.2.3"))
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        })
    };
    let backend = PodBackend::new(client, config(), None);
    let instance = backend
        .create(instance_spec("python-abcdef0123"))
        .await
        .unwrap();
    assert_eq!(instance.addr.to_string(), "10.1.2.3:8888");
    assert_eq!(instance.labels[LABEL_ROLE], "pool");

    let lines = api.lines();
    assert_eq!(lines[0], "POST /api/v1/namespaces/fns/pods");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l == "GET /api/v1/namespaces/fns/pods/python-abcdef0123")
    );
    assert_eq!(gets.load(Ordering::SeqCst), 3, "polled until Ready");

    let pod = api.requests()[0].body.clone();
    let meta = &pod["metadata"];
    assert_eq!(meta["name"], "python-abcdef0123");
    assert_eq!(meta["namespace"], "fns");
    for (k, v) in [
        ("app.kubernetes.io/managed-by", "kappa"),
        ("kappa.dev/role", "pool"),
        ("kappa.dev/instance", "python-abcdef0123"),
        ("kappa.dev/environment", "python"),
        ("kappa.dev/environment-namespace", "default"),
        ("kappa.dev/env-generation", "2"),
    ] {
        assert_eq!(meta["labels"][k], v, "label {k}");
    }
    assert_eq!(meta["annotations"]["kappa.dev/created-by"], "executor-0");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["userfunc", "secrets", "configs", "tmp"]);
    let runtime = &spec["containers"][0];
    assert_eq!(runtime["name"], "runtime");
    assert_eq!(runtime["image"], "ghcr.io/example/python-env:1.0");
    assert_eq!(runtime["ports"][0]["containerPort"], 8888);
    assert_eq!(runtime["resources"]["limits"]["memory"], "134217728");
    assert_eq!(runtime["resources"]["limits"]["cpu"], "250m");
    let env: Vec<String> = runtime["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            )
        })
        .collect();
    assert!(env.contains(&"HOST=0.0.0.0".to_string()), "{env:?}");
    assert!(env.contains(&"LOG_LEVEL=debug".to_string()), "{env:?}");
    let mounts = runtime["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/userfunc" && m["readOnly"] == true)
    );
    let fetcher = &spec["containers"][1];
    assert_eq!(fetcher["name"], "fetcher");
    assert_eq!(fetcher["image"], "registry.example/kappa:0.1.0");
    assert_eq!(fetcher["command"], json!(["kappa", "fetcher"]));
    assert_eq!(fetcher["ports"][0]["containerPort"], 8000);
    assert_eq!(fetcher["readinessProbe"]["httpGet"]["path"], "/readyz");
    for c in [runtime, fetcher] {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", c["name"]);
    }
    let typed: Pod = serde_json::from_value(pod).unwrap();
    write_manifest("pod-pool", &typed);
}

#[tokio::test]
async fn a_pod_that_cannot_pull_its_image_fails_fast_and_is_deleted() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "POST" => Reply::Json(201, r.body.clone()),
        "GET" => Reply::Json(
            200,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "python-badimage00", "namespace": "fns"},
                "status": {"phase": "Pending", "containerStatuses": [{
                    "name": "runtime", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}
            }),
        ),
        "DELETE" => Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let backend = PodBackend::new(client, config(), None);
    let err = backend
        .create(instance_spec("python-badimage00"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Start(m) if m.contains("ImagePullBackOff")),
        "{err}"
    );
    assert_eq!(
        api.lines().last().unwrap(),
        "DELETE /api/v1/namespaces/fns/pods/python-badimage00"
    );
}

#[tokio::test]
async fn reap_deletes_the_pod_with_its_grace_period() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "DELETE" => Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let backend = PodBackend::new(client, config(), None);
    backend
        .delete("python-abcdef0123", Duration::from_secs(7))
        .await
        .unwrap();
    let r = &api.requests()[0];
    assert_eq!(
        r.line(),
        "DELETE /api/v1/namespaces/fns/pods/python-abcdef0123"
    );
    assert_eq!(r.body["gracePeriodSeconds"], 7);
    // A pod the API does not have is `NotFound`: `deleting_an_unknown_instance_is_not_found` of
    // the shared conformance suite (`pod_conformance.rs`).
}

#[tokio::test]
async fn list_returns_ready_labelled_pods_and_deletes_dead_ones() {
    let pool = with_status(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "python-warm000001", "namespace": "fns",
            "labels": {"app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "pool"}}}),
        true,
        "10.0.0.5",
    );
    let mut dead = with_status(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "python-dead000001", "namespace": "fns",
            "labels": {"app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "pool"}}}),
        false,
        "10.0.0.6",
    );
    dead["status"]["phase"] = json!("Failed");
    let (client, api) = FakeApi::start(move |r| match r.method.as_str() {
        "GET" => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"},
                   "items": [pool.clone(), dead.clone()]}),
        ),
        "DELETE" => Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let backend = PodBackend::new(client, config(), None);
    let instances = backend.list().await.unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].id, "python-warm000001");
    assert_eq!(instances[0].addr.to_string(), "10.0.0.5:8888");
    let requests = api.requests();
    assert_eq!(requests[0].line(), "GET /api/v1/namespaces/fns/pods");
    assert!(
        requests[0]
            .query
            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkappa%2Ckappa.dev%2Frole"),
        "{}",
        requests[0].query
    );
    assert_eq!(
        requests[1].line(),
        "DELETE /api/v1/namespaces/fns/pods/python-dead000001"
    );
}

#[tokio::test]
async fn terminated_and_vanished_pods_become_exit_events_once() {
    let (client, _api) = FakeApi::start(|_| status(500, "InternalError", "unused"));
    let backend = PodBackend::new(client, config(), None);
    let mut events = backend.subscribe();
    let oom: Pod = serde_json::from_value(json!({
        "metadata": {"name": "python-oom0000001"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "runtime", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
    }))
    .unwrap();
    backend.on_watch_event(watcher::Event::Apply(oom.clone()));
    backend.on_watch_event(watcher::Event::Apply(oom.clone()));
    let InstanceEvent::Exited { id, reason } = events.recv().await.unwrap();
    assert_eq!(id, "python-oom0000001");
    assert!(reason.oom_killed);
    assert_eq!(reason.code, Some(137));
    // Reported once; its deletion afterwards is not a second exit.
    backend.on_watch_event(watcher::Event::Delete(oom));
    assert!(events.try_recv().is_err());

    let evicted: Pod =
        serde_json::from_value(json!({"metadata": {"name": "python-evicted001"}})).unwrap();
    backend.on_watch_event(watcher::Event::Delete(evicted));
    let InstanceEvent::Exited { id, .. } = events.recv().await.unwrap();
    assert_eq!(id, "python-evicted001");
}
