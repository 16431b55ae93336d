//! The shared instance-backend conformance suite (`kappa_test_support::backend`) against the
//! pod backend over the stateful fake API server ([`super::fake_api`]).
//!
//! No kubelet runs here, so [`Kubelet`] stands in for one: for every pod the backend creates it
//! gives the pod its own loopback address (`127.x.y.z`), starts the real Python runtime on its
//! port 8888 and a real fetcher (`kappa_fetcher::serve`) beside it, and once the runtime answers
//! `/healthz` writes the pod's status (Running, Ready, `podIP`) through the API; when the pod
//! is gone from the API it stops both. Code is downloaded from a small archive server standing
//! in for the API's `/v1/archives`.
//!
//! Every check of the suite runs except `specializing_an_unknown_instance_is_not_found`: the
//! pod backend does not keep its own record of instances, it asks whatever answers at the
//! instance's address (a pod's fetcher), so an unknown instance is whatever that address says
//! (in a cluster, a connection error), not `NotFound`. Specializing a *deleted* instance fails
//! for both backends (`specializing_a_deleted_instance_fails`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kappa_core::{FunctionId, InstanceSpec, SpecializeRequest, TokenCheck};
use kappa_fetcher::{FetcherConfig, pod_fetcher_token, serve};
use kappa_kube::PodBackend;
use kappa_test_support::backend::Subject;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::backend::{FETCHER_KEY, config};
use super::fake_api::{FakeApiServer, FakeConfig};
use super::manifests::instance_spec;
use super::specialize::{archive_server, free_port, sha256, zip_of};

/// What the stand-in kubelet runs for one pod; dropping it stops them.
struct PodProcesses {
    _runtime: tokio::process::Child,
    _fetcher: DropGuard,
    _dir: tempfile::TempDir,
}

/// A loopback address of its own for each pod (the whole of 127/8 is loopback on Linux): the
/// process id's low 16 bits, then a counter, so that test processes running side by side (one
/// per test) do not share one.
fn pod_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(2);
    let [_, _, hi, lo] = std::process::id().to_be_bytes();
    Ipv4Addr::new(127, hi, lo, NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn start_pod(name: &str, ip: Ipv4Addr, fetcher_port: u16) -> PodProcesses {
    let server =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions/runtimes/python/server.py");
    let runtime = tokio::process::Command::new("python3")
        .arg(server)
        .args(["--host", &ip.to_string(), "--port", "8888"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind((ip, fetcher_port))
        .await
        .expect("the fetcher's port on the pod's address");
    let fetcher = FetcherConfig {
        userfunc: dir.path().join("userfunc"),
        secrets: dir.path().join("secrets"),
        configs: dir.path().join("configs"),
        runtime_url: format!("http://{ip}:8888"),
        api_token: None,
        specialize_token: Some(TokenCheck::new(&pod_fetcher_token(FETCHER_KEY, name))),
        timeout: Duration::from_secs(30),
        ..FetcherConfig::in_pod()
    };
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, fetcher, stop.clone()));
    let http = reqwest::Client::new();
    let healthz = format!("http://{ip}:8888/healthz");
    kappa_test_support::eventually_async(
        Duration::from_secs(30),
        &format!("the runtime of pod {name} to answer"),
        || async {
            http.get(&healthz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    PodProcesses {
        _runtime: runtime,
        _fetcher: stop.drop_guard(),
        _dir: dir,
    }
}

/// Runs pods as a kubelet would, as long as it is not dropped.
struct Kubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    fn start(pods: Api<Pod>, fetcher_port: u16) -> Self {
        let task = tokio::spawn(async move {
            let mut running: HashMap<String, PodProcesses> = HashMap::new();
            loop {
                let list = pods.list(&ListParams::default()).await.unwrap();
                let names: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                running.retain(|name, _| names.contains(name));
                for name in names {
                    if running.contains_key(&name) {
                        continue;
                    }
                    let ip = pod_ip();
                    running.insert(name.clone(), start_pod(&name, ip, fetcher_port).await);
                    let status = json!({"status": {
                        "phase": "Running",
                        "podIP": IpAddr::V4(ip).to_string(),
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [
                            {"name": "runtime", "ready": true, "restartCount": 0, "image": "x",
                             "imageID": "", "state": {"running": {}}},
                        ],
                    }});
                    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { task }
    }
}

async fn make() -> Subject {
    let archive = zip_of(&[("hello.py", "def main():\n    return 'hello from a pod'\n")]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let server = FakeApiServer::new(FakeConfig::default());
    let mut cfg = config();
    cfg.api_url = format!("http://{archives}");
    cfg.fetcher_port = free_port();
    let kubelet = Kubelet::start(
        Api::namespaced(server.client(), &cfg.template.namespace),
        cfg.fetcher_port,
    );
    let backend = PodBackend::new(server.client(), cfg, None);
    let package = SpecializeRequest {
        function: FunctionId::new("default", "hello"),
        generation: 1,
        archive_sha256: sha,
        filename: None,
        entrypoint: "hello.main".into(),
        env: BTreeMap::new(),
        files: Vec::new(),
        timeout: Duration::from_secs(30),
        egress: true,
        host_ports: Vec::new(),
    };
    Subject::new(
        Arc::new(backend),
        |id: &str| -> InstanceSpec {
            let mut spec = instance_spec(id);
            spec.labels = BTreeMap::from([("kappa.dev/environment".into(), "python".into())]);
            spec
        },
        package,
        (server, kubelet),
    )
}

kappa_test_support::backend_conformance_tests!(@checks make;
    created_instances_are_listed_until_deleted,
    instances_are_independent,
    specialize_loads_a_package,
    deleting_an_unknown_instance_is_not_found,
    specializing_a_deleted_instance_fails,
);
