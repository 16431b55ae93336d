//! The Function finalizer controller: the requests one reconcile sends (finalizer added with a
//! guarding `test`; for a Function being deleted, its Deployments, pods and Secrets deleted,
//! then the finalizer removed), the drain window left to the pool manager, errors naming what
//! failed, and the kube-runtime controller retrying a failure with backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kappa_kube::{FUNCTION_FINALIZER, FinalizerConfig, FinalizerOutcome, FunctionFinalizer};
use kappa_test_support::eventually;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::mock::{FakeApi, Recorded, Reply, status};

const FUNCTION: &str = "/apis/kappa.dev/v1/namespaces/team/functions/hello";
const PODS: &str = "/api/v1/namespaces/kappa-functions/pods";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/kappa-functions/deployments";
const SECRETS: &str = "/api/v1/namespaces/kappa-functions/secrets";

fn function_json(finalizers: &[&str], deleting_since: Option<&str>) -> Value {
    let mut o = json!({
        "apiVersion": "kappa.dev/v1", "kind": "Function",
        "metadata": {"name": "hello", "namespace": "team", "resourceVersion": "40", "uid": "u-1"},
        "spec": {"environment": {"name": "python"}, "functionTimeout": 30},
    });
    if !finalizers.is_empty() {
        o["metadata"]["finalizers"] = json!(finalizers);
    }
    if let Some(since) = deleting_since {
        o["metadata"]["deletionTimestamp"] = json!(since);
    }
    o
}

fn function(finalizers: &[&str], deleting_since: Option<&str>) -> DynamicObject {
    serde_json::from_value(function_json(finalizers, deleting_since)).unwrap()
}

fn config() -> FinalizerConfig {
    FinalizerConfig {
        retry_base: Duration::from_millis(10),
        ..FinalizerConfig::new("kappa-functions")
    }
}

/// A metadata-only list (what `list_metadata` asks for) of these objects; a name starting with
/// `terminating-` carries a deletionTimestamp.
fn metadata_list(names: &[&str]) -> Reply {
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut meta = json!({"name": name, "namespace": "kappa-functions", "resourceVersion": "50"});
            if name.starts_with("terminating-") {
                meta["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
            }
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta})
        })
        .collect();
    Reply::Json(
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "50"}, "items": items}),
    )
}

fn success() -> Reply {
    Reply::Json(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    )
}

/// The query with `%2F`, `%3D` and `%2C` decoded, to read label selectors.
fn decoded(r: &Recorded) -> String {
    r.query
        .replace("%2F", "/")
        .replace("%3D", "=")
        .replace("%2C", ",")
}

#[tokio::test]
async fn adds_the_finalizer_guarded_by_the_list_it_read() {
    let (client, api) = FakeApi::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("PATCH", FUNCTION) => Reply::Json(200, function_json(&[FUNCTION_FINALIZER], None)),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let finalizer = FunctionFinalizer::new(client, config());

    // None yet: test that there are none, then add the list.
    let outcome = finalizer.reconcile(&function(&[], None)).await.unwrap();
    assert_eq!(outcome, FinalizerOutcome::Added);
    // Another controller's first: test the whole list, then append ours.
    let outcome = finalizer
        .reconcile(&function(&["example.com/backup"], None))
        .await
        .unwrap();
    assert_eq!(outcome, FinalizerOutcome::Added);
    // Already there: nothing sent.
    let outcome = finalizer
        .reconcile(&function(&[FUNCTION_FINALIZER], None))
        .await
        .unwrap();
    assert_eq!(outcome, FinalizerOutcome::Unchanged);
    // Being deleted without ours (deleted before we saw it): not ours to hold, and a
    // finalizer cannot be added to an object being deleted.
    let outcome = finalizer
        .reconcile(&function(
            &["example.com/backup"],
            Some("2020-01-01T00:00:00Z"),
        ))
        .await
        .unwrap();
    assert_eq!(outcome, FinalizerOutcome::Unchanged);

    let requests = api.requests();
    assert_eq!(
        api.lines(),
        [format!("PATCH {FUNCTION}"), format!("PATCH {FUNCTION}")]
    );
    assert_eq!(
        requests[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["kappa.dev/instances"]},
        ])
    );
    assert_eq!(
        requests[1].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/backup"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "kappa.dev/instances"},
        ])
    );
}

#[tokio::test]
async fn a_deleted_functions_instances_go_before_its_finalizer() {
    let (client, api) = FakeApi::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", PODS) => metadata_list(&["pod-a", "pod-b", "terminating-pod-c"]),
        ("GET", DEPLOYMENTS) => metadata_list(&["hello-nd"]),
        ("GET", SECRETS) => metadata_list(&["hello-nd-spec"]),
        // Deleted by the pool manager meanwhile: still success.
        ("DELETE", p) if p == format!("{PODS}/pod-b") => status(404, "NotFound", "gone"),
        ("DELETE", _) => success(),
        ("PATCH", FUNCTION) => Reply::Json(200, function_json(&["example.com/backup"], None)),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let finalizer = FunctionFinalizer::new(client, config());
    // Deleted long ago: the drain window is over.
    let outcome = finalizer
        .reconcile(&function(
            &["example.com/backup", FUNCTION_FINALIZER],
            Some("2020-01-01T00:00:00Z"),
        ))
        .await
        .unwrap();
    assert_eq!(outcome, FinalizerOutcome::Finalized);

    let requests = api.requests();
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.line())
        .collect();
    assert_eq!(
        writes,
        [
            // The Deployment first, so its ReplicaSet does not replace deleted pods.
            format!("DELETE {DEPLOYMENTS}/hello-nd"),
            format!("DELETE {PODS}/pod-a"),
            format!("DELETE {PODS}/pod-b"),
            format!("DELETE {SECRETS}/hello-nd-spec"),
            format!("PATCH {FUNCTION}"),
        ],
        "the pod already being deleted is left alone"
    );
    let selector = |path: &str| {
        let r = requests
            .iter()
            .find(|r| r.method == "GET" && r.path == path)
            .unwrap();
        decoded(r)
    };
    assert!(
        selector(PODS)
            .contains("labelSelector=kappa.dev/function=hello,kappa.dev/function-namespace=team"),
        "{}",
        selector(PODS)
    );
    for path in [DEPLOYMENTS, SECRETS] {
        assert!(
            selector(path).contains(
                "labelSelector=kappa.dev/role=newdeploy,kappa.dev/function=hello,kappa.dev/function-namespace=team"
            ),
            "{}",
            selector(path)
        );
    }
    let deployment = requests
        .iter()
        .find(|r| r.method == "DELETE" && r.path.starts_with(DEPLOYMENTS))
        .unwrap();
    assert_eq!(
        deployment.body["propagationPolicy"], "Background",
        "its ReplicaSets and pods go with it"
    );
    let patch = requests.last().unwrap();
    assert_eq!(
        patch.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": "kappa.dev/instances"},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ]),
        "removes ours only, at the index it read, guarded by a test"
    );
}

#[tokio::test]
async fn live_pods_are_left_to_the_pool_manager_during_the_drain_window() {
    let pods = Arc::new(Mutex::new(vec!["pod-a"]));
    let (client, api) = {
        let pods = Arc::clone(&pods);
        FakeApi::start(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", PODS) => metadata_list(&pods.lock().unwrap()),
            ("GET", DEPLOYMENTS | SECRETS) => metadata_list(&[]),
            ("PATCH", FUNCTION) => Reply::Json(200, function_json(&[], None)),
            _ => status(405, "MethodNotAllowed", "unexpected"),
        })
    };
    let finalizer = FunctionFinalizer::new(client, config());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let deleting = function(&[FUNCTION_FINALIZER], Some(&now));
    let outcome = finalizer.reconcile(&deleting).await.unwrap();
    let FinalizerOutcome::Draining {
        pods: live,
        remaining,
    } = outcome
    else {
        panic!("expected Draining, got {outcome:?}");
    };
    assert_eq!(live, 1);
    // functionTimeout 30 s + the default slack of 10 s, minus the moment that passed.
    assert!(
        remaining <= Duration::from_secs(40) && remaining > Duration::from_secs(35),
        "{remaining:?}"
    );
    assert!(
        api.requests().iter().all(|r| r.method == "GET"),
        "nothing deleted within the window: {:#?}",
        api.lines()
    );

    // The pool manager drained and deleted it: the finalizer goes at once.
    pods.lock().unwrap().clear();
    let outcome = finalizer.reconcile(&deleting).await.unwrap();
    assert_eq!(outcome, FinalizerOutcome::Finalized);
    assert_eq!(api.lines().last().unwrap(), &format!("PATCH {FUNCTION}"));
}

#[tokio::test]
async fn a_failed_deletion_keeps_the_finalizer_and_names_what_failed() {
    let (client, api) = FakeApi::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", PODS) => metadata_list(&["pod-a"]),
        ("GET", DEPLOYMENTS | SECRETS) => metadata_list(&[]),
        ("DELETE", _) => status(403, "Forbidden", "pods \"pod-a\" is forbidden"),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let finalizer = FunctionFinalizer::new(client, config());
    let err = finalizer
        .reconcile(&function(
            &[FUNCTION_FINALIZER],
            Some("2020-01-01T00:00:00Z"),
        ))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("deleting Pod kappa-functions/pod-a for Function team/hello"),
        "{message}"
    );
    assert!(
        !api.lines().iter().any(|l| l.starts_with("PATCH")),
        "the finalizer stays until its cleanup succeeded"
    );
}

#[tokio::test]
async fn the_controller_watches_every_namespace_and_retries_with_backoff() {
    let patches = Arc::new(Mutex::new(0));
    let (client, api) = {
        let patches = Arc::clone(&patches);
        FakeApi::start(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/apis/kappa.dev/v1/functions") if r.query.contains("watch=true") => {
                // Keeps the watcher in its (backed-off) retry loop; the list is what counts.
                status(500, "InternalError", "no watch in this test")
            }
            ("GET", "/apis/kappa.dev/v1/functions") => Reply::Json(
                200,
                json!({"apiVersion": "kappa.dev/v1", "kind": "FunctionList",
                       "metadata": {"resourceVersion": "41"},
                       "items": [function_json(&[], None)]}),
            ),
            ("PATCH", FUNCTION) => {
                let mut n = patches.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    return status(500, "InternalError", "etcd timed out");
                }
                Reply::Json(200, function_json(&[FUNCTION_FINALIZER], None))
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        })
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(FunctionFinalizer::new(client, config()).run(shutdown.clone()));
    eventually(
        Duration::from_secs(10),
        "the finalizer patch retried after its failure",
        || *patches.lock().unwrap() >= 2,
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
    let patches: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches[0].body, patches[1].body, "the same guarded patch");
}
