//! `newdeploy` functions as Deployments: the requests `KubeDeployments` sends (apply as create
//! and as update with a conflict retried, scale, delete, list, ready), the events its pod
//! watcher derives from scripted watch lines, and the fetcher's start-up mode for real (a real
//! Python runtime and a loopback archive server; a definitive failure ends the fetcher and
//! leaves its message in the termination log).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kappa_core::{
    BackendError, ConfigKind, ConfigVolume, DeploymentEvent, DeploymentSpec, Deployments,
    FunctionId, SpecializeRequest,
};
use kappa_fetcher::{FetchFiles, FetchRequest, FetcherConfig, RunError, Startup};
use kappa_kube::deployments::{
    deployment_name, function_deployment, specialize_request, specialize_secret,
};
use kappa_kube::pods::{Placement, PodTemplate};
use kappa_kube::{DeploymentsConfig, KubeDeployments};
use kappa_types::Toleration;
use kube::runtime::watcher;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::manifests::instance_spec;
use super::mock::{FakeApi, Recorded, Reply, status, watch_lines, write_manifest};
use super::specialize::{archive_server, free_port, sha256, zip_of};

const NS: &str = "fns";

fn config() -> DeploymentsConfig {
    DeploymentsConfig {
        template: PodTemplate {
            namespace: NS.into(),
            fetcher_image: "registry.example/kappa:0.1.0".into(),
            created_by: "executor-0".into(),
            ..PodTemplate::default()
        },
        api_url: "http://kappa-api.kappa:8080".into(),
        api_token: Some("token-1".into()),
    }
}

fn hello() -> FunctionId {
    FunctionId::new("default", "hello")
}

fn spec(revision: &str, replicas: u32) -> DeploymentSpec {
    DeploymentSpec {
        function: hello(),
        generation: 4,
        revision: revision.into(),
        instance: instance_spec("unused"),
        specialize: SpecializeRequest {
            function: hello(),
            generation: 4,
            archive_sha256: "ab".repeat(32),
            filename: None,
            entrypoint: "hello.main".into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            files: vec![ConfigVolume {
                kind: ConfigKind::Secret,
                namespace: "default".into(),
                name: "db".into(),
                entries: BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]),
            }],
            timeout: Duration::from_secs(60),
            egress: true,
            host_ports: Vec::new(),
        },
        replicas,
        grace: Duration::from_secs(75),
    }
}

/// Answers like an API server keeping one Secret and one Deployment in memory: GET (404 when
/// absent), POST, PUT; `conflicts` PUTs of each kind answer 409 first.
fn fake_objects(
    existing: Vec<Value>,
    conflicts: usize,
) -> impl FnMut(&Recorded) -> Reply + Send + 'static {
    let objects: Arc<Mutex<BTreeMap<String, Value>>> = Arc::new(Mutex::new(
        existing
            .into_iter()
            .map(|o| {
                let path = match o["kind"].as_str().unwrap() {
                    "Secret" => format!("/api/v1/namespaces/{NS}/secrets/"),
                    _ => format!("/apis/apps/v1/namespaces/{NS}/deployments/"),
                };
                (
                    format!("{path}{}", o["metadata"]["name"].as_str().unwrap()),
                    o,
                )
            })
            .collect(),
    ));
    let mut conflicted: BTreeMap<String, usize> = BTreeMap::new();
    move |r| {
        let mut objects = objects.lock().unwrap();
        match r.method.as_str() {
            "GET" => match objects.get(&r.path) {
                Some(o) => Reply::Json(200, o.clone()),
                None => status(404, "NotFound", "not found"),
            },
            "POST" => {
                let path = format!(
                    "{}/{}",
                    r.path,
                    r.body["metadata"]["name"].as_str().unwrap()
                );
                let mut o = r.body.clone();
                o["metadata"]["resourceVersion"] = json!("1");
                objects.insert(path, o.clone());
                Reply::Json(201, o)
            }
            "PUT" => {
                let n = conflicted.entry(r.path.clone()).or_default();
                if *n < conflicts {
                    *n += 1;
                    return status(409, "Conflict", "the object has been modified");
                }
                objects.insert(r.path.clone(), r.body.clone());
                Reply::Json(200, r.body.clone())
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        }
    }
}

fn decode_request(secret: &Value) -> (FetchRequest, Vec<u8>) {
    let b64 = secret["data"]["request.json"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn apply_creates_the_secret_then_the_deployment() {
    let (client, api) = FakeApi::start(fake_objects(Vec::new(), 0));
    let deployments = KubeDeployments::new(client, config(), None);
    deployments.apply(&spec("rev0001", 2)).await.unwrap();

    let name = deployment_name(&hello());
    let lines = api.lines();
    assert_eq!(
        lines,
        [
            format!("GET /api/v1/namespaces/{NS}/secrets/{name}"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("GET /apis/apps/v1/namespaces/{NS}/deployments/{name}"),
            format!("POST /apis/apps/v1/namespaces/{NS}/deployments"),
        ]
    );
    let requests = api.requests();

    // The Secret holds the fetcher's request: the archive on the API server, the token and the
    // function's Secret values.
    let secret = &requests[1].body;
    assert_eq!(secret["metadata"]["name"], name);
    assert_eq!(secret["metadata"]["labels"]["kappa.dev/role"], "newdeploy");
    assert_eq!(secret["metadata"]["labels"]["kappa.dev/function"], "hello");
    assert_eq!(secret["type"], "Opaque");
    let (request, bytes) = decode_request(secret);
    assert_eq!(
        request.archive_url,
        format!(
            "http://kappa-api.kappa:8080/v1/archives/{}",
            "ab".repeat(32)
        )
    );
    assert_eq!(request.token.as_deref(), Some("token-1"));
    assert_eq!(request.entrypoint, "hello.main");
    assert_eq!(request.env["GREETING"], "hi");
    assert_eq!(
        request.files,
        vec![FetchFiles {
            dir: "secrets".into(),
            namespace: "default".into(),
            name: "db".into(),
            entries: BTreeMap::from([("password".into(), "aHVudGVyMg==".into())]),
        }]
    );

    let d = &requests[3].body;
    assert_eq!(d["metadata"]["name"], name);
    assert_eq!(d["metadata"]["namespace"], NS);
    let labels = &d["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "kappa");
    assert_eq!(labels["kappa.dev/revision"], "rev0001");
    assert_eq!(labels["kappa.dev/generation"], "4");
    assert_eq!(labels["kappa.dev/environment"], "python");
    assert_eq!(d["spec"]["replicas"], 2);
    // Only the labels that never change select the pods.
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "newdeploy",
               "kappa.dev/function": "hello", "kappa.dev/function-namespace": "default"})
    );
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    let template = &d["spec"]["template"];
    assert_eq!(template["metadata"]["labels"], *labels);
    // With egress, no label takes it away.
    assert!(labels.get("kappa.dev/egress").is_none(), "{labels}");
    // A new request rolls the pods: its sha256 is on the template.
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        template["metadata"]["annotations"]["kappa.dev/specialize-sha256"],
        digest
    );
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["terminationGracePeriodSeconds"], 75);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "specialize")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], name);
    let fetcher = container(d, "fetcher");
    assert_eq!(
        fetcher["args"],
        json!([
            "--listen",
            "0.0.0.0:8000",
            "--specialize-from",
            "/etc/kappa/specialize/request.json"
        ])
    );
    assert!(fetcher["volumeMounts"].as_array().unwrap().contains(
        &json!({"name": "specialize", "mountPath": "/etc/kappa/specialize", "readOnly": true})
    ));
    assert_eq!(fetcher["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(fetcher["terminationMessagePath"], "/dev/termination-log");
    let runtime = container(d, "runtime");
    // The request (Secret values, the API token) is the fetcher's alone.
    assert!(
        !runtime["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "specialize")
    );
    assert_eq!(runtime["readinessProbe"]["tcpSocket"]["port"], 8888);
    assert_eq!(runtime["resources"]["limits"]["memory"], "134217728");
    for c in [fetcher, runtime] {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    }
}

#[tokio::test]
async fn a_function_without_egress_gets_pods_the_network_policy_selects() {
    let (client, api) = FakeApi::start(fake_objects(Vec::new(), 0));
    let deployments = KubeDeployments::new(client, config(), None);
    let mut spec = spec("rev0001", 1);
    spec.specialize.egress = false;
    deployments.apply(&spec).await.unwrap();
    let requests = api.requests();
    let d = &requests[3].body;
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["kappa.dev/egress"],
        "none"
    );
    // Not in the selector: a function that changes its egress rolls its pods.
    assert!(
        d["spec"]["selector"]["matchLabels"]
            .get("kappa.dev/egress")
            .is_none()
    );
}

#[tokio::test]
async fn apply_replaces_with_the_version_read_and_retries_a_conflict() {
    let name = deployment_name(&hello());
    let (client, seed) = FakeApi::start(fake_objects(Vec::new(), 0));
    KubeDeployments::new(client, config(), None)
        .apply(&spec("rev0001", 1))
        .await
        .unwrap();
    let seeded = seed.requests();
    let mut secret = seeded[1].body.clone();
    secret["metadata"]["resourceVersion"] = json!("5");
    secret["metadata"]["annotations"]["other.example/keep"] = json!("yes");
    let mut deployment = seeded[3].body.clone();
    deployment["metadata"]["resourceVersion"] = json!("7");
    deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
        json!("2025-01-01T00:00:00Z");
    let old_digest =
        deployment["spec"]["template"]["metadata"]["annotations"]["kappa.dev/specialize-sha256"]
            .clone();

    let (client, api) = FakeApi::start(fake_objects(vec![secret, deployment], 1));
    let deployments = KubeDeployments::new(client, config(), None);
    let mut next = spec("rev0002", 3);
    next.specialize.archive_sha256 = "cd".repeat(32);
    next.generation = 5;
    deployments.apply(&next).await.unwrap();

    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/{name}");
    let deploy_path = format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}");
    assert_eq!(
        api.lines(),
        [
            format!("GET {secret_path}"),
            format!("PUT {secret_path}"),
            format!("GET {secret_path}"),
            format!("PUT {secret_path}"),
            format!("GET {deploy_path}"),
            format!("PUT {deploy_path}"),
            format!("GET {deploy_path}"),
            format!("PUT {deploy_path}"),
        ]
    );
    let requests = api.requests();
    let put_secret = &requests[3].body;
    assert_eq!(put_secret["metadata"]["resourceVersion"], "5");
    assert_eq!(
        put_secret["metadata"]["annotations"]["other.example/keep"],
        "yes"
    );
    assert_eq!(
        put_secret["metadata"]["labels"]["kappa.dev/revision"],
        "rev0002"
    );
    let (request, _) = decode_request(put_secret);
    assert_eq!(request.sha256, "cd".repeat(32));

    let put = &requests[7].body;
    assert_eq!(put["metadata"]["resourceVersion"], "7");
    assert_eq!(put["spec"]["replicas"], 3);
    assert_eq!(put["metadata"]["labels"]["kappa.dev/revision"], "rev0002");
    let annotations = &put["spec"]["template"]["metadata"]["annotations"];
    assert_ne!(annotations["kappa.dev/specialize-sha256"], old_digest);
    assert_eq!(
        annotations["kubectl.kubernetes.io/restartedAt"],
        "2025-01-01T00:00:00Z"
    );
    assert_eq!(
        put["spec"]["template"]["metadata"]["labels"]["kappa.dev/generation"],
        "5"
    );
}

#[tokio::test]
async fn apply_never_overwrites_an_object_that_is_not_kappas() {
    let name = deployment_name(&hello());
    let foreign = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "3"},
        "data": {"x": "eA=="}});
    let (client, api) = FakeApi::start(fake_objects(vec![foreign], 0));
    let err = KubeDeployments::new(client, config(), None)
        .apply(&spec("rev0001", 1))
        .await
        .unwrap_err();
    match &err {
        BackendError::Io(m) => {
            assert!(m.contains(&format!("Secret {NS}/{name}")), "{m}");
            assert!(m.contains("not Kappa's"), "{m}");
        }
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(api.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn conflicts_are_retried_a_bounded_number_of_times() {
    let (client, seed) = FakeApi::start(fake_objects(Vec::new(), 0));
    KubeDeployments::new(client, config(), None)
        .apply(&spec("rev0001", 1))
        .await
        .unwrap();
    let mut secret = seed.requests()[1].body.clone();
    secret["metadata"]["resourceVersion"] = json!("5");
    let (client, api) = FakeApi::start(fake_objects(vec![secret], usize::MAX));
    let err = KubeDeployments::new(client, config(), None)
        .apply(&spec("rev0002", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Io(m) if m.contains("still conflicting after 5 attempts")),
        "{err:?}"
    );
    assert_eq!(
        api.requests().iter().filter(|r| r.method == "PUT").count(),
        5
    );
}

#[tokio::test]
async fn scale_marks_the_victims_then_sets_the_replicas() {
    let name = deployment_name(&hello());
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "PATCH" if r.path.ends_with("/pods/gone-pod") => status(404, "NotFound", "gone"),
        "PATCH" if r.path.contains("/pods/") => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
        ),
        "PATCH" => Reply::Json(
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let deployments = KubeDeployments::new(client, config(), None);
    deployments
        .scale(&hello(), 1, &["pod-a".to_string(), "gone-pod".to_string()])
        .await
        .unwrap();
    let requests = api.requests();
    assert_eq!(
        api.lines(),
        [
            format!("PATCH /api/v1/namespaces/{NS}/pods/pod-a"),
            format!("PATCH /api/v1/namespaces/{NS}/pods/gone-pod"),
            format!("PATCH /apis/apps/v1/namespaces/{NS}/deployments/{name}"),
        ]
    );
    assert_eq!(
        requests[0].body,
        json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000000"}}})
    );
    assert_eq!(requests[2].body, json!({"spec": {"replicas": 1}}));

    // Scaling a Deployment that is not there says so.
    let (client, _api) = FakeApi::start(|_| status(404, "NotFound", "no such deployment"));
    let err = KubeDeployments::new(client, config(), None)
        .scale(&hello(), 2, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::NotFound(m) if m.contains(&name)),
        "{err:?}"
    );
}

#[tokio::test]
async fn delete_removes_the_deployment_and_its_secret_and_tolerates_absence() {
    let name = deployment_name(&hello());
    let deletes = Arc::new(AtomicUsize::new(0));
    let (client, api) = {
        let deletes = Arc::clone(&deletes);
        FakeApi::start(move |r| {
            if r.method != "DELETE" {
                return status(405, "MethodNotAllowed", "unexpected");
            }
            // The first pair succeeds, the second finds nothing.
            if deletes.fetch_add(1, Ordering::SeqCst) < 2 {
                Reply::Json(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            } else {
                status(404, "NotFound", "not found")
            }
        })
    };
    let deployments = KubeDeployments::new(client, config(), None);
    deployments.delete(&hello()).await.unwrap();
    deployments.delete(&hello()).await.unwrap();
    let requests = api.requests();
    assert_eq!(
        requests[0].line(),
        format!("DELETE /apis/apps/v1/namespaces/{NS}/deployments/{name}")
    );
    assert_eq!(requests[0].body["propagationPolicy"], "Background");
    assert_eq!(
        requests[1].line(),
        format!("DELETE /api/v1/namespaces/{NS}/secrets/{name}")
    );
    assert_eq!(requests.len(), 4);
}

#[tokio::test]
async fn list_reads_the_functions_deployments() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => Reply::Json(
            200,
            json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "9"},
            "items": [
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "fn-hello-1", "labels": {
                    "app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "newdeploy",
                    "kappa.dev/function": "hello", "kappa.dev/function-namespace": "default",
                    "kappa.dev/revision": "rev0001"}},
                 "spec": {"replicas": 3, "selector": {}, "template": {}}},
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "unlabelled", "labels": {"kappa.dev/role": "newdeploy"}},
                 "spec": {"replicas": 1, "selector": {}, "template": {}}},
            ]}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let list = KubeDeployments::new(client, config(), None)
        .list()
        .await
        .unwrap();
    assert_eq!(
        list,
        vec![kappa_core::DeploymentStatus {
            function: hello(),
            revision: "rev0001".into(),
            replicas: 3,
        }]
    );
    let r = &api.requests()[0];
    assert_eq!(
        r.line(),
        format!("GET /apis/apps/v1/namespaces/{NS}/deployments")
    );
    assert!(
        r.query.contains(
            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkappa%2Ckappa.dev%2Frole%3Dnewdeploy"
        ),
        "{}",
        r.query
    );
}

/// A pod of hello's Deployment as the API returns it.
fn nd_pod(name: &str, ready: bool, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "10", "labels": {
            "app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "newdeploy",
            "kappa.dev/function": "hello", "kappa.dev/function-namespace": "default",
            "kappa.dev/generation": "4", "kappa.dev/revision": "rev0001",
            "pod-template-hash": "abc123"}},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [
                {"name": "runtime", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"running": {}}},
                {"name": "fetcher", "ready": ready, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"running": {}}},
            ],
        },
    })
}

/// `pod` whose fetcher failed on its run `run` and is waiting to be restarted.
fn crashed(mut pod: Value, run: i32, message: &str) -> Value {
    pod["status"]["conditions"][0]["status"] = json!("False");
    pod["status"]["containerStatuses"][1] = json!({
        "name": "fetcher", "ready": false, "restartCount": run + 1, "image": "x", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
    });
    pod
}

#[tokio::test]
async fn ready_lists_ready_pods_by_name() {
    let mut terminating = nd_pod("fn-hello-x-3", true, "10.0.0.3");
    terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    let items = vec![
        nd_pod("fn-hello-x-1", true, "10.0.0.1"),
        nd_pod("fn-hello-x-2", false, "10.0.0.2"),
        terminating,
    ];
    let (client, api) = FakeApi::start(move |r| match r.method.as_str() {
        "GET" => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"},
                   "items": items.clone()}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let ready = KubeDeployments::new(client, config(), None)
        .ready()
        .await
        .unwrap();
    assert_eq!(ready.len(), 1, "{ready:?}");
    let r = &ready[0];
    assert_eq!(r.function, hello());
    assert_eq!(r.instance.id, "fn-hello-x-1");
    assert_eq!(r.instance.addr.to_string(), "10.0.0.1:8888");
    assert_eq!(r.generation, 4);
    assert_eq!(r.revision, "rev0001");
    assert_eq!(r.instance.labels["kappa.dev/role"], "newdeploy");
    let request = &api.requests()[0];
    assert_eq!(request.line(), format!("GET /api/v1/namespaces/{NS}/pods"));
    assert!(
        request.query.contains("kappa.dev%2Frole%3Dnewdeploy"),
        "{}",
        request.query
    );
}

#[tokio::test]
async fn the_watch_reports_ready_gone_and_failed_pods() {
    let listed = nd_pod("fn-hello-x-1", true, "10.0.0.1");
    let lines = vec![
        json!({"type": "ADDED", "object": nd_pod("fn-hello-x-2", false, "10.0.0.2")}),
        json!({"type": "MODIFIED", "object": nd_pod("fn-hello-x-2", true, "10.0.0.2")}),
        json!({"type": "MODIFIED", "object": nd_pod("fn-hello-x-1", false, "10.0.0.1")}),
        json!({"type": "MODIFIED", "object": crashed(nd_pod("fn-hello-x-2", false, "10.0.0.2"), 0,
            "specialize_failed: No module named 'nope'\n\nTraceback (most recent call last):\n  ...")}),
        json!({"type": "DELETED", "object": nd_pod("fn-hello-x-3", true, "10.0.0.3")}),
    ];
    let watches = Arc::new(AtomicUsize::new(0));
    let (client, api) = {
        let watches = Arc::clone(&watches);
        FakeApi::start(move |r| {
            if r.method != "GET" {
                return status(405, "MethodNotAllowed", "unexpected");
            }
            if !r.query.contains("watch=true") {
                return Reply::Json(
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList",
                           "metadata": {"resourceVersion": "20"}, "items": [listed.clone()]}),
                );
            }
            if watches.fetch_add(1, Ordering::SeqCst) == 0 {
                watch_lines(&lines)
            } else {
                status(500, "InternalError", "no more scripted events")
            }
        })
    };
    let deployments = Arc::new(KubeDeployments::new(client, config(), None));
    let mut events = deployments.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&deployments).watch(shutdown.clone()));

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        seen.push(event);
    }
    shutdown.cancel();
    task.await.unwrap();

    let ready_ids: Vec<&str> = seen
        .iter()
        .filter_map(|e| match e {
            DeploymentEvent::Ready(r) => Some(r.instance.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ready_ids, ["fn-hello-x-1", "fn-hello-x-2"]);
    let DeploymentEvent::Ready(first) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(first.instance.addr.to_string(), "10.0.0.1:8888");
    assert_eq!(
        seen[2],
        DeploymentEvent::Gone {
            function: hello(),
            id: "fn-hello-x-1".into()
        }
    );
    // The crash makes fn-hello-x-2 not ready, then its failure follows.
    assert_eq!(
        seen[3],
        DeploymentEvent::Gone {
            function: hello(),
            id: "fn-hello-x-2".into()
        }
    );
    let failed = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        failed,
        DeploymentEvent::Failed {
            function: hello(),
            revision: "rev0001".into(),
            message: "specialize_failed: No module named 'nope'".into(),
            detail: Some("Traceback (most recent call last):\n  ...".into()),
        }
    );
    // A pod never reported ready leaves without an event.
    assert!(events.try_recv().is_err());
    let watch = api.eventually(|r| r.query.contains("watch=true")).await;
    assert!(
        watch.query.contains("kappa.dev%2Frole%3Dnewdeploy"),
        "{}",
        watch.query
    );
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn failures_are_reported_once_per_run_and_relists_drop_vanished_pods() {
    let (client, _api) = FakeApi::start(|_| status(500, "InternalError", "unused"));
    let deployments = KubeDeployments::new(client, config(), None);
    let mut events = deployments.subscribe();
    let base = nd_pod("fn-hello-x-1", false, "10.0.0.1");

    // Run 0 fails: one event, however often the same status is seen.
    let run0 = pod(crashed(
        base.clone(),
        0,
        "placing the code failed: unsafe path ../x",
    ));
    deployments.on_watch_event(watcher::Event::Apply(run0.clone()));
    deployments.on_watch_event(watcher::Event::Apply(run0));
    let DeploymentEvent::Failed {
        message, detail, ..
    } = events.try_recv().unwrap()
    else {
        panic!("expected a failure")
    };
    assert_eq!(message, "placing the code failed: unsafe path ../x");
    assert!(detail.unwrap().contains("fn-hello-x-1"));
    assert!(events.try_recv().is_err());
    // The terminated state itself (before the restart) counts as the same run.
    let mut terminated = base.clone();
    terminated["status"]["containerStatuses"][1] = json!({
        "name": "fetcher", "ready": false, "restartCount": 1, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": 1, "reason": "Error"}}});
    deployments.on_watch_event(watcher::Event::Apply(pod(terminated)));
    let DeploymentEvent::Failed { message, .. } = events.try_recv().unwrap() else {
        panic!("expected a failure")
    };
    assert_eq!(message, "the fetcher exited with code 1 (Error)");
    let run1 = pod(crashed(base.clone(), 1, "x"));
    deployments.on_watch_event(watcher::Event::Apply(run1));
    assert!(events.try_recv().is_err(), "run 1 was reported already");

    // An image that cannot be pulled is a failure too, once per pod.
    let mut pull = nd_pod("fn-hello-x-2", false, "10.0.0.2");
    pull["status"]["containerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}});
    deployments.on_watch_event(watcher::Event::Apply(pod(pull.clone())));
    deployments.on_watch_event(watcher::Event::Apply(pod(pull)));
    let DeploymentEvent::Failed { message, .. } = events.try_recv().unwrap() else {
        panic!("expected a failure")
    };
    assert!(message.contains("ImagePullBackOff"), "{message}");
    assert!(events.try_recv().is_err());

    // A relist (after a 410) that no longer shows a ready pod: it is gone.
    let ready = pod(nd_pod("fn-hello-x-3", true, "10.0.0.3"));
    deployments.on_watch_event(watcher::Event::Apply(ready.clone()));
    assert!(matches!(
        events.try_recv().unwrap(),
        DeploymentEvent::Ready(_)
    ));
    deployments.on_watch_event(watcher::Event::Init);
    deployments.on_watch_event(watcher::Event::InitApply(pod(nd_pod(
        "fn-hello-x-1",
        false,
        "10.0.0.1",
    ))));
    deployments.on_watch_event(watcher::Event::InitDone);
    assert_eq!(
        events.try_recv().unwrap(),
        DeploymentEvent::Gone {
            function: hello(),
            id: "fn-hello-x-3".into()
        }
    );
    // A terminating pod is gone at once.
    deployments.on_watch_event(watcher::Event::Apply(ready.clone()));
    assert!(matches!(
        events.try_recv().unwrap(),
        DeploymentEvent::Ready(_)
    ));
    let mut terminating = ready;
    terminating.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    deployments.on_watch_event(watcher::Event::Apply(terminating.clone()));
    assert!(matches!(
        events.try_recv().unwrap(),
        DeploymentEvent::Gone { .. }
    ));
    // Its fetcher killed at the end of the grace period is no failure.
    let mut killed = crashed(serde_json::to_value(&terminating).unwrap(), 0, "");
    killed["status"]["containerStatuses"][1]["lastState"]["terminated"]["exitCode"] = json!(137);
    deployments.on_watch_event(watcher::Event::Apply(pod(killed)));
    assert!(events.try_recv().is_err());
    deployments.on_watch_event(watcher::Event::Delete(terminating));
    assert!(events.try_recv().is_err());
}

#[test]
fn deployment_and_secret_serialise() {
    let template = PodTemplate {
        namespace: NS.into(),
        image_pull_policy: Some("IfNotPresent".into()),
        image_pull_secrets: vec!["registry".into()],
        service_account: Some("kappa-function".into()),
        ..PodTemplate::default()
    };
    let placement = Placement {
        requests: kappa_types::ResourceList {
            cpu: Some("100m".into()),
            memory: Some("64Mi".into()),
            pids: None,
        },
        node_selector: BTreeMap::from([("kappa.dev/pool".into(), "functions".into())]),
        tolerations: vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("functions".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }],
    };
    let spec = spec("rev0001", 2);
    let name = deployment_name(&spec.function);
    let config = DeploymentsConfig {
        template: template.clone(),
        ..config()
    };
    let (request, sha) = specialize_request(&config, &spec);
    let secret = specialize_secret(&template, &spec, &name, &request);
    let deployment = function_deployment(&template, &spec, &placement, &name, &sha);
    let json = serde_json::to_value(&deployment).unwrap();
    assert_eq!(
        json["spec"]["template"]["spec"]["nodeSelector"]["kappa.dev/pool"],
        "functions"
    );
    assert_eq!(
        json["spec"]["template"]["spec"]["volumes"][4]["secret"]["defaultMode"],
        0o440
    );
    write_manifest("deployment-newdeploy", &deployment);
    write_manifest("secret-newdeploy", &secret);
}

// ---- the fetcher's start-up mode, for real ------------------------------------------------

struct Runtime {
    child: tokio::process::Child,
}

/// The Python runtime on `port`, up (answering `/healthz`).
async fn python_runtime_on(port: u16) -> Runtime {
    let server =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions/runtimes/python/server.py");
    let child = tokio::process::Command::new("python3")
        .arg(server)
        .args(["--port", &port.to_string()])
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let url = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..500 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Runtime { child };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the python runtime did not come up on port {port}");
}

struct StartedFetcher {
    port: u16,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    shutdown: CancellationToken,
}

/// Writes the start-up request for `archive` (served by `archives`) and starts the fetcher in
/// start-up mode next to a runtime on `runtime_port`.
async fn start_fetcher(
    dir: &Path,
    archives: std::net::SocketAddr,
    sha: &str,
    entrypoint: &str,
    runtime_port: u16,
) -> StartedFetcher {
    let request = FetchRequest {
        archive_url: format!("http://{archives}/v1/archives/{sha}"),
        sha256: sha.into(),
        filename: None,
        entrypoint: entrypoint.into(),
        env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        files: Vec::new(),
        token: Some("token-1".into()),
    };
    let file = dir.join("request.json");
    std::fs::write(&file, serde_json::to_vec(&request).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = FetcherConfig {
        userfunc: dir.join("userfunc"),
        secrets: dir.join("secrets"),
        configs: dir.join("configs"),
        runtime_url: format!("http://127.0.0.1:{runtime_port}"),
        timeout: Duration::from_secs(30),
        ..FetcherConfig::in_pod()
    };
    let startup = Startup {
        termination_log: dir.join("termination-log"),
        retry_for: Duration::from_secs(30),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        watch_interval: Duration::from_millis(50),
        ..Startup::new(file)
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kappa_fetcher::serve_startup(
        listener,
        config,
        startup,
        shutdown.clone(),
    ));
    StartedFetcher {
        port,
        task,
        shutdown,
    }
}

async fn readyz(port: u16) -> u16 {
    match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits (bounded) until the fetcher's readiness is `want`.
async fn wait_readyz(port: u16, want: u16) {
    for _ in 0..1000 {
        if readyz(port).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fetcher's /readyz never answered {want}");
}

async fn invoke(runtime_port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{runtime_port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_fetcher_specializes_on_start_and_again_after_a_runtime_restart() {
    let archive = zip_of(&[(
        "hello.py",
        "import os\n\ndef main():\n    return 'hello on start, ' + os.environ.get('GREETING', '?')\n",
    )]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let dir = tempfile::tempdir().unwrap();
    let runtime_port = free_port();
    // The fetcher starts first: it is not ready, and waits for the runtime.
    let fetcher = start_fetcher(dir.path(), archives, &sha, "hello.main", runtime_port).await;
    wait_readyz(fetcher.port, 503).await;
    let body = reqwest::get(format!("http://127.0.0.1:{}/readyz", fetcher.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("specializing"), "{body}");
    let mut runtime = python_runtime_on(runtime_port).await;

    wait_readyz(fetcher.port, 200).await;
    assert_eq!(invoke(runtime_port).await, "hello on start, hi");
    // Nothing may specialize it again: it has no fetcher token, so every /specialize is
    // refused before anything else.
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/specialize", fetcher.port))
        .json(&json!({"archiveUrl": "http://x/", "sha256": sha, "entrypoint": "hello.main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // The kubelet restarts the runtime container: it comes back generic, and the fetcher
    // specializes it again (not ready meanwhile).
    runtime.child.kill().await.unwrap();
    wait_readyz(fetcher.port, 503).await;
    let mut runtime = python_runtime_on(runtime_port).await;
    wait_readyz(fetcher.port, 200).await;
    assert_eq!(invoke(runtime_port).await, "hello on start, hi");

    fetcher.shutdown.cancel();
    fetcher.task.await.unwrap().unwrap();
    assert!(!dir.path().join("termination-log").exists());
    runtime.child.kill().await.unwrap();
}

#[tokio::test]
async fn an_unsafe_archive_ends_the_fetcher_with_its_message_in_the_termination_log() {
    let archive = zip_of(&[("../escape.py", "def main():\n    return 1\n")]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let dir = tempfile::tempdir().unwrap();
    let runtime_port = free_port();
    let mut runtime = python_runtime_on(runtime_port).await;
    let fetcher = start_fetcher(dir.path(), archives, &sha, "escape.main", runtime_port).await;

    let result = tokio::time::timeout(Duration::from_secs(30), fetcher.task)
        .await
        .expect("the fetcher ends")
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, RunError::Specialize { .. }), "{err:?}");
    let log = std::fs::read_to_string(dir.path().join("termination-log")).unwrap();
    assert!(log.starts_with("placing the code failed"), "{log}");
    assert!(!dir.path().join("userfunc/escape.py").exists());
    runtime.child.kill().await.unwrap();
}

#[tokio::test]
async fn a_refused_code_ends_the_fetcher_with_the_runtimes_message_and_traceback() {
    let archive = zip_of(&[(
        "broken.py",
        "import no_such_module_here\n\ndef main():\n    return 1\n",
    )]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let dir = tempfile::tempdir().unwrap();
    let runtime_port = free_port();
    let mut runtime = python_runtime_on(runtime_port).await;
    let fetcher = start_fetcher(dir.path(), archives, &sha, "broken.main", runtime_port).await;

    let result = tokio::time::timeout(Duration::from_secs(30), fetcher.task)
        .await
        .expect("the fetcher ends")
        .unwrap();
    assert!(result.is_err());
    let log = std::fs::read_to_string(dir.path().join("termination-log")).unwrap();
    let (message, detail) = log.split_once("\n\n").expect("message, blank line, detail");
    assert!(message.contains("no_such_module_here"), "{log}");
    assert!(detail.contains("Traceback"), "{log}");
    assert!(log.len() <= 4096);

    // The watcher reads it back as the failure's message and detail.
    let (client, _api) = FakeApi::start(|_| status(500, "InternalError", "unused"));
    let deployments = KubeDeployments::new(client, config(), None);
    let mut events = deployments.subscribe();
    deployments.on_watch_event(watcher::Event::Apply(pod(crashed(
        nd_pod("fn-hello-x-1", false, "10.0.0.1"),
        0,
        &log,
    ))));
    let DeploymentEvent::Failed {
        message: m,
        detail: d,
        ..
    } = events.try_recv().unwrap()
    else {
        panic!("expected a failure")
    };
    assert_eq!(m, message.trim());
    assert_eq!(d.as_deref(), Some(detail.trim()));
    runtime.child.kill().await.unwrap();
}
