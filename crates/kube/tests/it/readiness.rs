//! The router's pod readiness watcher (`PodReadinessWatcher`) against scripted list and watch
//! answers: which pods it asks for, and the `Readiness` calls each pod change turns into
//! (only changes, deletions, re-lists that miss a pod, forgetting after the delay).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kappa_core::Readiness;
use kappa_kube::{PodReadinessConfig, PodReadinessWatcher};
use kappa_test_support::eventually;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::mock::{FakeApi, Reply, status, watch_lines};

/// Records every call, as `"ready pod-a"`, `"not-ready pod-a"`, `"forget pod-a"`.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Readiness for Recorder {
    fn set_ready(&self, id: &str, ready: bool) {
        let what = if ready { "ready" } else { "not-ready" };
        self.calls.lock().unwrap().push(format!("{what} {id}"));
    }

    fn forget(&self, id: &str) {
        self.calls.lock().unwrap().push(format!("forget {id}"));
    }
}

/// A function pod: `ready` sets its Ready condition; `edit` changes the rest.
fn pod(name: &str, rv: u32, ready: bool, edit: impl FnOnce(&mut Value)) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "fns", "resourceVersion": rv.to_string(),
            "labels": {"app.kubernetes.io/managed-by": "kappa", "kappa.dev/role": "specialized",
                "kappa.dev/instance": name},
        },
        "spec": {"containers": [{"name": "runtime", "image": "python-env"}]},
        "status": {
            "phase": "Running", "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    });
    edit(&mut pod);
    pod
}

fn list(rv: u32, items: Vec<Value>) -> Reply {
    Reply::Json(
        200,
        json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

#[tokio::test]
async fn pod_changes_become_readiness_calls() {
    let mut lists = 0;
    let mut watches = 0;
    let (client, api) = FakeApi::start(move |r| {
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/namespaces/fns/pods");
        if !r.query.contains("watch=true") {
            lists += 1;
            return match lists {
                1 => list(
                    10,
                    vec![
                        pod("pod-a", 8, true, |_| {}),
                        pod("pod-b", 9, false, |_| {}),
                        pod("pod-c", 10, true, |_| {}),
                    ],
                ),
                // pod-c was deleted while the watch was down; pod-d appeared.
                _ => list(
                    30,
                    vec![
                        pod("pod-a", 12, true, terminated),
                        pod("pod-d", 29, true, |p| {
                            p["metadata"]["labels"]["kappa.dev/role"] = json!("newdeploy");
                        }),
                    ],
                ),
            };
        }
        watches += 1;
        match watches {
            1 => watch_lines(&[
                event("MODIFIED", pod("pod-b", 11, true, |_| {})),
                // The same readiness again: nothing to report.
                event("MODIFIED", pod("pod-a", 11, true, |_| {})),
                event("MODIFIED", pod("pod-a", 12, true, terminated)),
                event(
                    "MODIFIED",
                    pod("pod-b", 13, true, |p| {
                        p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
                    }),
                ),
                event("DELETED", pod("pod-b", 14, false, |_| {})),
                // The server lost the history: the watcher lists again.
                json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "message": "too old resource version",
                    "reason": "Expired", "code": 410}}),
            ]),
            _ => status(
                500,
                "InternalError",
                "the test's API has nothing more to say",
            ),
        }
    });
    let recorder = Arc::new(Recorder::default());
    let mut config = PodReadinessConfig::new("fns");
    config.forget_after = Duration::from_millis(100);
    let watcher =
        PodReadinessWatcher::new(client, config, Arc::clone(&recorder) as Arc<dyn Readiness>);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher.run(shutdown.clone()));

    let expected = [
        "ready pod-a",
        "not-ready pod-b",
        "ready pod-c",
        "ready pod-b",
        "not-ready pod-a",
        "not-ready pod-b",
        "forget pod-b",
        "ready pod-d",
        "not-ready pod-c",
        "forget pod-c",
    ];
    eventually(Duration::from_secs(10), "every readiness call", || {
        recorder.calls().len() >= expected.len()
    })
    .await;
    assert_eq!(recorder.calls(), expected);

    // It asks for the serving pods only (not warm pool pods).
    let first = api
        .requests()
        .into_iter()
        .find(|r| !r.query.contains("watch=true"))
        .unwrap();
    let selector = first
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .unwrap()
        .replace("%2F", "/")
        .replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%28", "(")
        .replace("%29", ")")
        .replace(['+'], " ")
        .replace("%20", " ");
    assert_eq!(
        selector,
        "app.kubernetes.io/managed-by=kappa,kappa.dev/role in (specialized,newdeploy)"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();
}

/// The runtime container ended (out of memory).
fn terminated(pod: &mut Value) {
    pod["status"]["containerStatuses"] = json!([{
        "name": "runtime", "ready": false, "restartCount": 0, "image": "python-env",
        "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }]);
}
