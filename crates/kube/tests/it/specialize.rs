//! Specialization end to end without a cluster: the pod backend asks a real fetcher (in
//! process, on a free loopback port), which downloads the archive from a tiny archive server
//! with the bearer token, checks its sha256, extracts it and specializes a real Python runtime
//! (`functions/runtimes/python/server.py`); then the backend labels the pod through the (mock)
//! Kubernetes API. What a cluster adds (pod networking, the shared emptyDir) is not exercised.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use kappa_core::TokenCheck;
use kappa_core::{
    Backend, BackendError, ConfigKind, ConfigVolume, FunctionId, Instance, SpecializeRequest,
};
use kappa_fetcher::{FetcherConfig, RunError, pod_fetcher_token, serve};
use kappa_kube::PodBackend;
use kappa_test_support::eventually;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::backend::{FETCHER_KEY, config};
use super::mock::{FakeApi, Reply, status};

pub(super) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, body) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    out.into_inner()
}

pub(super) fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `archive` at `/v1/archives/<its sha256>` to requests bearing `token-1`.
pub(super) async fn archive_server(archive: Vec<u8>) -> SocketAddr {
    let sha = sha256(&archive);
    let app = axum::Router::new().route(
        "/v1/archives/{sha}",
        get(move |UrlPath(asked): UrlPath<String>, headers: HeaderMap| {
            let archive = archive.clone();
            let sha = sha.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                if auth != Some("Bearer token-1") {
                    return (StatusCode::UNAUTHORIZED, Vec::new());
                }
                if asked != sha {
                    return (StatusCode::NOT_FOUND, Vec::new());
                }
                (StatusCode::OK, archive)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Runtime {
    child: tokio::process::Child,
    port: u16,
}

async fn python_runtime() -> Runtime {
    let server =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions/runtimes/python/server.py");
    let port = free_port();
    let child = tokio::process::Command::new("python3")
        .arg(server)
        .args(["--port", &port.to_string()])
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..500 {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Runtime { child, port };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the python runtime did not come up on port {port}");
}

/// A fetcher in front of the runtime on `runtime_port` that accepts the token of pod `pod`.
async fn fetcher(runtime_port: u16, dir: &Path, pod: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = FetcherConfig {
        userfunc: dir.join("userfunc"),
        secrets: dir.join("secrets"),
        configs: dir.join("configs"),
        runtime_url: format!("http://127.0.0.1:{runtime_port}"),
        api_token: None,
        specialize_token: Some(TokenCheck::new(&pod_fetcher_token(FETCHER_KEY, pod))),
        timeout: Duration::from_secs(30),
        ..FetcherConfig::in_pod()
    };
    tokio::spawn(serve(listener, config, CancellationToken::new()));
    port
}

fn request(sha: &str, entrypoint: &str) -> SpecializeRequest {
    SpecializeRequest {
        function: FunctionId::new("default", "hello"),
        generation: 4,
        archive_sha256: sha.to_string(),
        filename: None,
        entrypoint: entrypoint.into(),
        env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        files: vec![ConfigVolume {
            kind: ConfigKind::Secret,
            namespace: "default".into(),
            name: "db".into(),
            entries: BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]),
        }],
        timeout: Duration::from_secs(30),
        egress: true,
        host_ports: Vec::new(),
    }
}

#[tokio::test]
async fn specialize_through_the_fetcher_runs_the_function_and_labels_the_pod() {
    let archive = zip_of(&[(
        "hello.py",
        "import os\n\ndef main():\n    return 'hello from the fetcher, ' + os.environ.get('GREETING', '?')\n",
    )]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let mut runtime = python_runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher_port = fetcher(runtime.port, dir.path(), "python-spec000001").await;

    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "PATCH" => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "python-spec000001", "namespace": "fns"}}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let mut cfg = config();
    cfg.api_url = format!("http://{archives}");
    cfg.fetcher_port = fetcher_port;
    let backend = PodBackend::new(client, cfg, None);
    let instance = Instance {
        id: "python-spec000001".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], runtime.port)).into(),
        labels: BTreeMap::new(),
    };
    backend
        .specialize(&instance, &request(&sha, "hello.main"))
        .await
        .unwrap();

    // The runtime now answers with the function.
    let body = reqwest::get(format!("http://127.0.0.1:{}/", runtime.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from the fetcher, hi");
    // The secret was placed for the function, read-only.
    let secret = dir.path().join("secrets/default/db/password");
    assert_eq!(std::fs::read(&secret).unwrap(), b"hunter2");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o400
    );
    // The pod was labelled for adoption.
    let patch = api.eventually(|r| r.method == "PATCH").await;
    assert_eq!(patch.path, "/api/v1/namespaces/fns/pods/python-spec000001");
    let labels = &patch.body["metadata"]["labels"];
    assert_eq!(labels["kappa.dev/role"], "specialized");
    assert_eq!(labels["kappa.dev/function"], "hello");
    assert_eq!(labels["kappa.dev/function-namespace"], "default");
    assert_eq!(labels["kappa.dev/generation"], "4");
    assert_eq!(
        patch.body["metadata"]["annotations"]["kappa.dev/archive-sha256"],
        sha
    );

    // A second specialization of the same pod is refused.
    let err = backend
        .specialize(&instance, &request(&sha, "hello.main"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            BackendError::Specialize {
                status: Some(409),
                ..
            }
        ),
        "{err:?}"
    );
    runtime.child.kill().await.unwrap();
}

#[tokio::test]
async fn fetch_failures_and_import_errors_keep_their_cause() {
    let archive = zip_of(&[(
        "broken.py",
        "import no_such_module_here\n\ndef main():\n    return 1\n",
    )]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let mut runtime = python_runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher_port = fetcher(runtime.port, dir.path(), "python-fail000001").await;
    let (client, api) = FakeApi::start(|_| status(405, "MethodNotAllowed", "unexpected"));
    let mut cfg = config();
    cfg.api_url = format!("http://{archives}");
    cfg.fetcher_port = fetcher_port;
    let backend = PodBackend::new(client, cfg, None);
    let instance = Instance {
        id: "python-fail000001".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], runtime.port)).into(),
        labels: BTreeMap::new(),
    };

    // An archive that is not there (wrong sha256) is a code error naming the download.
    let missing = "0".repeat(64);
    let err = backend
        .specialize(&instance, &request(&missing, "broken.main"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Code(m) if m.contains("404")),
        "{err:?}"
    );

    // The runtime's import error reaches the caller as the runtime's own message.
    let err = backend
        .specialize(&instance, &request(&sha, "broken.main"))
        .await
        .unwrap_err();
    match &err {
        BackendError::Specialize { message, .. } => {
            assert!(message.contains("no_such_module_here"), "{message}")
        }
        other => panic!("expected a specialize error, got {other:?}"),
    }
    // Nothing was labelled.
    eventually(Duration::from_secs(10), "no kube request", || {
        api.requests().is_empty()
    })
    .await;
    runtime.child.kill().await.unwrap();
}

/// Anything that reaches a warm pod's port 8000 without that pod's token (another function's
/// pod, on a cluster whose CNI ignores NetworkPolicies) is refused before the body is read,
/// and nothing is placed: the runtime stays generic and the real pool manager can still use it.
#[tokio::test]
async fn specialize_without_the_pods_token_is_refused_and_changes_nothing() {
    let archive = zip_of(&[("evil.py", "def main():\n    return 'hijacked'\n")]);
    let sha = sha256(&archive);
    let archives = archive_server(archive).await;
    let mut runtime = python_runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let pod = "python-tok000001";
    let fetcher_port = fetcher(runtime.port, dir.path(), pod).await;
    let url = format!("http://127.0.0.1:{fetcher_port}/specialize");
    let body = json!({
        "archiveUrl": format!("http://{archives}/v1/archives/{sha}"),
        "sha256": sha,
        "entrypoint": "evil.main",
    });
    let http = reqwest::Client::new();
    let other_pod = pod_fetcher_token(FETCHER_KEY, "python-other00001");
    let platform_token = FETCHER_KEY.to_string();
    for auth in [
        None,
        Some(other_pod),
        Some(platform_token),
        Some(String::new()),
    ] {
        let mut request = http.post(&url).json(&body);
        if let Some(token) = &auth {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "with {auth:?}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unauthorized", "{error}");
    }
    // Not even a malformed body gets past the token check.
    let response = http.post(&url).body("{").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        std::fs::read_dir(dir.path().join("userfunc")).map_or(true, |mut d| d.next().is_none()),
        "nothing may be placed"
    );

    // The pool manager, with the pod's own token, specializes it with the real code.
    let real = zip_of(&[("hello.py", "def main():\n    return 'the real one'\n")]);
    let real_sha = sha256(&real);
    let real_archives = archive_server(real).await;
    let (client, _api) = FakeApi::start(move |r| match r.method.as_str() {
        "PATCH" => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "fns"}}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let mut cfg = config();
    cfg.api_url = format!("http://{real_archives}");
    cfg.fetcher_port = fetcher_port;
    let backend = PodBackend::new(client, cfg, None);
    let instance = Instance {
        id: pod.into(),
        addr: SocketAddr::from(([127, 0, 0, 1], runtime.port)).into(),
        labels: BTreeMap::new(),
    };
    backend
        .specialize(&instance, &request(&real_sha, "hello.main"))
        .await
        .unwrap();
    let answer = reqwest::get(format!("http://127.0.0.1:{}/", runtime.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(answer, "the real one");
    runtime.child.kill().await.unwrap();
}

/// A pool pod's fetcher started without its token refuses to start, naming the variable.
#[tokio::test]
async fn a_pool_fetcher_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = FetcherConfig {
        userfunc: dir.path().join("userfunc"),
        ..FetcherConfig::in_pod()
    };
    let err = kappa_fetcher::run(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::NoToken), "{err:?}");
    assert!(err.to_string().contains("KAPPA_FETCHER_TOKEN"), "{err}");
}
