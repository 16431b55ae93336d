//! The builder role on Kubernetes: `PodBuildRunner` over the fake API server, with a real API
//! server (kappa-api on a loopback port) holding the packages and archives, and a test
//! "kubelet" that runs each builder pod's steps and command for real (`kappa build-step`'s
//! `run_step` with the pod's own environment, and `/bin/sh -c` for the build) and reports the
//! containers' states and the build log through the fake API as the kubelet would.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kappa_archive::ArchiveStore;
use kappa_builder::{ApiArchives, BuildJob, Builder, BuilderConfig, RuntimeRegistry};
use kappa_kube::builds::{
    BuildStep, CONTAINER_BUILD, CONTAINER_FETCH, CONTAINER_UPLOAD, ENV_BUILD_TOKEN, PodBuildConfig,
    PodBuildRunner, StepConfig, build_pod, run_step,
};
use kappa_kube::pods::PodTemplate;
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_types::{Archive, Environment, Kind, Package};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::fake_api::FakeApiServer;
use super::mock::write_manifest;

const TOKEN: &str = "platform-token-for-builds";
const NS: &str = "kappa-functions";

/// The API server, the fake Kubernetes API, the builder and the test kubelet.
struct Cluster {
    dir: tempfile::TempDir,
    fake: FakeApiServer,
    store: Arc<MemoryStore>,
    archives: Arc<ArchiveStore>,
    api_url: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Pods the kubelet ran (their JSON as created).
    seen: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Cluster {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let archives =
            Arc::new(ArchiveStore::open(dir.path().join("api-archives"), 64 << 20).unwrap());
        let logs = Arc::new(
            kappa_logs::LogStore::open(dir.path().join("logs"), kappa_logs::LogConfig::default())
                .unwrap(),
        );
        let state =
            kappa_api::ApiState::new(store.clone(), archives.clone(), logs).with_token(TOKEN);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        {
            let app = kappa_api::app(state);
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .unwrap();
            }));
        }
        store
            .put(
                json!({
                    "apiVersion": "kappa.dev/v1", "kind": "Environment",
                    "metadata": {"name": "python", "namespace": "default"},
                    "spec": {"runtime": {"image": "ghcr.io/example/python-env:1.0"}}
                }),
                Precondition::None,
            )
            .await
            .unwrap();
        Self {
            dir,
            fake: FakeApiServer::default(),
            store,
            archives,
            api_url,
            shutdown,
            tasks,
            seen: Arc::default(),
        }
    }

    fn runner(&self) -> PodBuildRunner {
        PodBuildRunner::new(self.fake.client(), self.config())
    }

    fn config(&self) -> PodBuildConfig {
        PodBuildConfig::new(
            PodTemplate {
                namespace: NS.into(),
                ..PodTemplate::default()
            },
            self.api_url.clone(),
            Some(TOKEN.into()),
        )
    }

    /// Starts the test kubelet and the builder (after collecting leftover pods, as the role
    /// does).
    async fn start(&mut self) {
        let runner = self.runner();
        runner.collect_garbage().await.unwrap();
        self.tasks.push(tokio::spawn(kubelet(
            self.fake.clone(),
            self.dir.path().join("nodes"),
            self.seen.clone(),
            self.shutdown.clone(),
        )));
        let archives = ApiArchives::new(
            &self.api_url,
            Some(TOKEN.into()),
            self.dir.path().join("builder/archives"),
            64 << 20,
            kappa_archive::ExtractLimits::default(),
            Duration::from_secs(30),
        )
        .unwrap();
        let builder = Builder::new(
            BuilderConfig::new(self.dir.path().join("builder/builds")),
            self.store.clone(),
            Arc::new(archives),
            Arc::new(runner),
            RuntimeRegistry::new(self.dir.path().join("runtimes")),
        )
        .unwrap();
        let stop = self.shutdown.clone();
        self.tasks
            .push(tokio::spawn(async move { builder.run(stop).await }));
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("stops")
                .unwrap();
        }
    }

    /// A zip of `files` in the API's archive store.
    async fn source(&self, files: &[(&str, &str)]) -> Archive {
        let src = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(src.path().join(name), text).unwrap();
        }
        let zip = kappa_archive::pack_dir(src.path()).unwrap();
        let info = self.archives.put_bytes(&zip).await.unwrap();
        Archive::stored(&info.sha256, None)
    }

    async fn package(&self, name: &str, source: &Archive, buildcmd: &str, status: &str) {
        self.store
            .put(
                json!({
                    "apiVersion": "kappa.dev/v1", "kind": "Package",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {
                        "environment": {"name": "python", "namespace": "default"},
                        "source": source,
                        "buildcmd": buildcmd,
                    },
                    "status": {"buildstatus": status},
                }),
                Precondition::None,
            )
            .await
            .unwrap();
    }

    async fn wait_for(&self, name: &str, done: &[&str]) -> Package {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let object = self
                .store
                .get(Kind::Package, "default", name)
                .await
                .unwrap()
                .unwrap();
            let package = Package::from_json(object.value).unwrap();
            let status = serde_json::to_value(package.status.buildstatus).unwrap();
            if done.iter().any(|d| status == *d) {
                return package;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "package {name} still {status}: {}",
                package.status.buildlog
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn build_pods(&self) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.fake.client(), NS);
        pods.list(&ListParams::default().labels("kappa.dev/role=build"))
            .await
            .unwrap()
            .items
    }

    async fn wait_no_build_pods(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.build_pods().await.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "builder pods left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The environment variables of `container` in a pod's JSON.
fn env_of(pod: &Value, container: &str) -> BTreeMap<String, String> {
    let spec = &pod["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .filter(|c| c["name"] == container)
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn terminated(name: &str, code: i32, message: &str) -> Value {
    json!({
        "name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "message": message}},
    })
}

/// Plays the kubelet for every builder pod: runs its steps and command, reports.
async fn kubelet(
    fake: FakeApiServer,
    nodes: std::path::PathBuf,
    seen: Arc<std::sync::Mutex<Vec<Value>>>,
    stop: CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(fake.client(), NS);
    let mut done = HashSet::new();
    while !stop.is_cancelled() {
        let list = pods
            .list(&ListParams::default().labels("kappa.dev/role=build"))
            .await
            .unwrap();
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap();
            if !done.insert(name.clone()) {
                continue;
            }
            let json = serde_json::to_value(&pod).unwrap();
            seen.lock().unwrap().push(json.clone());
            let root = nodes.join(&name).join("build");
            let scratch = nodes.join(&name).join("tmp");
            std::fs::create_dir_all(&root).unwrap();
            let status = run_pod(&json, &root, &scratch, &fake, &name).await;
            pods.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_pod(
    pod: &Value,
    root: &Path,
    scratch: &Path,
    fake: &FakeApiServer,
    name: &str,
) -> Value {
    let step_config = |container: &str| {
        let env = env_of(pod, container);
        StepConfig {
            root: root.to_owned(),
            scratch: scratch.to_owned(),
            ..StepConfig::from_vars(|k| env.get(k).cloned()).unwrap()
        }
    };
    let failed = |inits: Vec<Value>, containers: Vec<Value>| json!({"phase": "Failed", "initContainerStatuses": inits, "containerStatuses": containers});
    if let Err(e) = run_step(BuildStep::Fetch, &step_config(CONTAINER_FETCH)).await {
        return failed(vec![terminated(CONTAINER_FETCH, 1, &e)], vec![]);
    }
    let fetched = terminated(CONTAINER_FETCH, 0, "");
    let command = pod["spec"]["initContainers"][1]["command"][2]
        .as_str()
        .unwrap()
        .to_owned();
    let output = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .current_dir(root)
        .output()
        .await
        .unwrap();
    let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    fake.set_log(NS, name, CONTAINER_BUILD, &log);
    let code = output.status.code().unwrap_or(1);
    if code != 0 {
        return failed(vec![fetched, terminated(CONTAINER_BUILD, code, "")], vec![]);
    }
    let built = terminated(CONTAINER_BUILD, 0, "");
    match run_step(BuildStep::Upload, &step_config(CONTAINER_UPLOAD)).await {
        Ok(report) => json!({
            "phase": "Succeeded",
            "initContainerStatuses": [fetched, built],
            "containerStatuses": [terminated(CONTAINER_UPLOAD, 0, &report)],
        }),
        Err(e) => failed(
            vec![fetched, built],
            vec![terminated(CONTAINER_UPLOAD, 1, &e)],
        ),
    }
}

#[tokio::test]
async fn builds_a_pending_package_in_a_builder_pod_through_the_api() {
    let mut cluster = Cluster::new().await;
    cluster.start().await;
    let source = cluster
        .source(&[("hello.py", "def main():\n    return 'hi'\n")])
        .await;
    cluster
        .package(
            "hello",
            &source,
            "echo building in the pod; mkdir -p \"$DEPLOY_PKG\"; cp hello.py \"$DEPLOY_PKG\"/; echo extra > \"$DEPLOY_PKG\"/built.txt",
            "pending",
        )
        .await;
    let package = cluster.wait_for("hello", &["succeeded", "failed"]).await;
    let log = &package.status.buildlog;
    assert_eq!(
        serde_json::to_value(package.status.buildstatus).unwrap(),
        "succeeded",
        "{log}"
    );
    assert!(
        log.contains("builder pod in namespace kappa-functions"),
        "{log}"
    );
    assert!(log.contains("building in the pod"), "{log}");
    assert!(
        log.contains("build succeeded: deployment archive sha256"),
        "{log}"
    );

    // The deployment archive is in the API server's store, uploaded by the pod.
    let deployment = package.spec.deployment.as_ref().unwrap();
    let sha = deployment.stored_sha256().unwrap();
    let dir = match cluster.archives.extracted(sha, None).await.unwrap() {
        kappa_archive::Extracted::Dir(dir) => dir,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        std::fs::read_to_string(dir.join("built.txt")).unwrap(),
        "extra\n"
    );
    assert!(dir.join("hello.py").is_file());

    // The pod: steps with a build token (not the platform token) the build command never sees.
    let pod = cluster.seen.lock().unwrap()[0].clone();
    let token = env_of(&pod, CONTAINER_FETCH)[ENV_BUILD_TOKEN].clone();
    assert!(token.starts_with("kappa-build."), "{token}");
    assert!(!token.contains(TOKEN));
    assert_eq!(env_of(&pod, CONTAINER_UPLOAD)[ENV_BUILD_TOKEN], token);
    assert!(!env_of(&pod, CONTAINER_BUILD).contains_key(ENV_BUILD_TOKEN));
    assert_eq!(
        pod["spec"]["initContainers"][1]["image"],
        "ghcr.io/example/python-env:1.0"
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["metadata"]["labels"]["kappa.dev/package"], "hello");

    // Garbage-collected once done.
    cluster.wait_no_build_pods().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_failed_build_in_a_pod_gives_a_failed_package_with_its_log() {
    let mut cluster = Cluster::new().await;
    cluster.start().await;
    let source = cluster.source(&[("hello.py", "x = 1\n")]).await;
    cluster
        .package(
            "broken",
            &source,
            "echo about to fail >&2; exit 3",
            "pending",
        )
        .await;
    let package = cluster.wait_for("broken", &["succeeded", "failed"]).await;
    let log = &package.status.buildlog;
    assert_eq!(
        serde_json::to_value(package.status.buildstatus).unwrap(),
        "failed",
        "{log}"
    );
    assert!(log.contains("about to fail"), "{log}");
    assert!(
        log.contains("build failed: the command exited with code 3"),
        "{log}"
    );
    assert!(package.spec.deployment.is_none());
    cluster.wait_no_build_pods().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_restarted_builder_collects_old_pods_and_builds_running_packages_again() {
    let mut cluster = Cluster::new().await;
    let source = cluster.source(&[("hello.py", "x = 1\n")]).await;
    // What a builder that died mid-build left: a running package and its pod.
    cluster
        .package("interrupted", &source, "echo rebuilt", "running")
        .await;
    let environment = Environment::from_json(
        cluster
            .store
            .get(Kind::Environment, "default", "python")
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    let spec = kappa_builder::BuildSpec {
        id: "leftover0001".into(),
        dir: cluster.dir.path().join("nowhere"),
        command: "sleep 1000".into(),
        env: BTreeMap::new(),
        read_only: Vec::new(),
        limits: kappa_core::Limits::default(),
        timeout: Duration::from_secs(600),
        network: true,
        max_log_bytes: 1024,
    };
    let job = BuildJob {
        spec: &spec,
        command: "sleep 1000",
        namespace: "default",
        package: "interrupted",
        source_sha256: source.stored_sha256().unwrap(),
        source_filename: None,
        environment: &environment,
    };
    let leftover = build_pod(&cluster.config(), &job, None);
    let pods: Api<Pod> = Api::namespaced(cluster.fake.client(), NS);
    pods.create(&PostParams::default(), &leftover)
        .await
        .unwrap();
    assert_eq!(cluster.build_pods().await.len(), 1);

    cluster.start().await;
    let package = cluster
        .wait_for("interrupted", &["succeeded", "failed"])
        .await;
    let log = &package.status.buildlog;
    assert_eq!(
        serde_json::to_value(package.status.buildstatus).unwrap(),
        "succeeded",
        "{log}"
    );
    assert!(log.contains("rebuilt"), "{log}");
    // The leftover was deleted before the kubelet ran it; only the new build's pod ran.
    let seen: Vec<String> = cluster
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !seen.contains(&"kappa-build-leftover0001".to_owned()),
        "{seen:?}"
    );
    cluster.wait_no_build_pods().await;
    cluster.stop().await;
}

#[test]
fn builder_pod_serialises() {
    let environment = Environment::from_json(json!({
        "apiVersion": "kappa.dev/v1", "kind": "Environment",
        "metadata": {"name": "python", "namespace": "default"},
        "spec": {
            "runtime": {"image": "ghcr.io/example/python-env:1.0"},
            "builder": {"image": "ghcr.io/example/python-builder:1.0", "command": "build"},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            "nodeSelector": {"kappa.dev/pool": "builds"},
        }
    }))
    .unwrap();
    let spec = kappa_builder::BuildSpec {
        id: "0123456789abcdef".into(),
        dir: "/unused".into(),
        command: "build".into(),
        env: BTreeMap::from([("PIP_ROOT_USER_ACTION".into(), "ignore".into())]),
        read_only: Vec::new(),
        limits: kappa_core::Limits {
            memory_bytes: Some(256 << 20),
            cpu_millis: Some(500),
            pids: Some(1024),
        },
        timeout: Duration::from_secs(600),
        network: true,
        max_log_bytes: 64 << 10,
    };
    let job = BuildJob {
        spec: &spec,
        command: "build",
        namespace: "default",
        package: "hello",
        source_sha256: &"a".repeat(64),
        source_filename: None,
        environment: &environment,
    };
    let config = PodBuildConfig::new(
        PodTemplate {
            image_pull_policy: Some("IfNotPresent".into()),
            image_pull_secrets: vec!["registry".into()],
            ..PodTemplate::default()
        },
        "http://kappa-api.kappa:8080",
        Some("key".into()),
    );
    let token = kappa_core::build_token("key", &spec.id, job.source_sha256);
    let pod = build_pod(&config, &job, Some(&token));
    let json = serde_json::to_value(&pod).unwrap();
    assert_eq!(json["metadata"]["name"], "kappa-build-0123456789abcdef");
    assert_eq!(json["spec"]["restartPolicy"], "Never");
    assert_eq!(json["spec"]["activeDeadlineSeconds"], 900);
    assert_eq!(
        json["spec"]["initContainers"][1]["image"],
        "ghcr.io/example/python-builder:1.0"
    );
    assert_eq!(
        json["spec"]["initContainers"][1]["resources"]["limits"]["memory"],
        "268435456"
    );
    assert_eq!(json["spec"]["nodeSelector"]["kappa.dev/pool"], "builds");
    write_manifest("pod-build", &pod);
}
