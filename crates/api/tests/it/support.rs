//! Test harness: an API app over a MemoryStore and temporary archive and log stores, driven with
//! `oneshot`, or served on a real loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use kappa_api::{ApiState, app, serve};
use kappa_archive::ArchiveStore;
use kappa_logs::{LogConfig, LogStore};
use kappa_store::{MemoryStore, Store, StoreOptions};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub const TOKEN: &str = "s3cret-token";

/// One API server under test.
pub struct Api {
    pub state: ApiState,
    pub store: Arc<MemoryStore>,
    pub archives: Arc<ArchiveStore>,
    pub logs: Arc<LogStore>,
    pub dir: TempDir,
    /// Sent as the bearer token by [`Api::call`].
    pub token: Option<String>,
}

/// How to build an [`Api`].
pub struct Options {
    pub token: Option<String>,
    pub max_archive_bytes: u64,
    pub store: StoreOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            max_archive_bytes: 64 * 1024 * 1024,
            store: StoreOptions::default(),
        }
    }
}

impl Api {
    pub fn new() -> Self {
        Self::with(Options::default())
    }

    pub fn with_token() -> Self {
        Self::with(Options {
            token: Some(TOKEN.into()),
            ..Options::default()
        })
    }

    pub fn with(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::with_options(options.store));
        let archives = Arc::new(
            ArchiveStore::open(dir.path().join("archives"), options.max_archive_bytes).unwrap(),
        );
        let logs = Arc::new(LogStore::open(dir.path().join("logs"), LogConfig::default()).unwrap());
        let mut state = ApiState::new(store.clone(), archives.clone(), logs.clone());
        if let Some(t) = &options.token {
            state = state.with_token(t.clone());
        }
        Self {
            state,
            store,
            archives,
            logs,
            dir,
            token: options.token,
        }
    }

    /// Replaces the state (e.g. to add an invoker); the stores stay the same.
    pub fn map_state(mut self, f: impl FnOnce(ApiState) -> ApiState) -> Self {
        self.state = f(self.state);
        self
    }

    pub fn app(&self) -> Router {
        app(self.state.clone())
    }

    /// Sends a raw request (the bearer token is added when configured and absent).
    pub async fn send(&self, mut request: Request<Body>) -> Response<Body> {
        if let Some(t) = &self.token
            && !request.headers().contains_key(header::AUTHORIZATION)
        {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        self.app().oneshot(request).await.unwrap()
    }

    /// Sends JSON (when `body` is given) and reads a JSON answer.
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        let response = self.send(builder.body(body).unwrap()).await;
        json_of(response).await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body)).await
    }

    pub async fn put(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("PUT", uri, Some(body)).await
    }

    pub async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call("DELETE", uri, None).await
    }

    /// Creates a resource and asserts it was created.
    pub async fn create(&self, plural: &str, body: Value) -> Value {
        let (status, value) = self.post(&format!("/v1/{plural}"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value
    }

    /// The store's current resource version.
    pub async fn version(&self) -> u64 {
        self.store.current_version().await.unwrap()
    }

    /// Creates environment `python`, package `hello` (a literal) and function `hello`.
    pub async fn seed(&self) {
        self.create("environments", env("python")).await;
        self.create(
            "packages",
            package("hello", "python", b"def main():\n    return 'hi'\n"),
        )
        .await;
        self.create("functions", function("hello", "python", "hello"))
            .await;
    }

    /// Serves the API on a loopback port until the returned server is dropped.
    pub async fn serve(&self) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, self.state.clone(), shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }
}

/// A served API; shut down on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The body of a response as JSON (`Null` when empty, a string when not JSON).
pub async fn json_of(response: Response<Body>) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// Asserts `value` is the JSON error shape with `code` (and `field` when given).
#[track_caller]
pub fn assert_error(
    status: StatusCode,
    value: &Value,
    expected_status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status, expected_status, "{value}");
    assert_eq!(value["error"]["code"], code, "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{value}"
    );
    if let Some(f) = field {
        assert_eq!(value["error"]["field"], f, "{value}");
    }
}

pub fn env(name: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"runtime": {"image": "python"}, "poolsize": 3}
    })
}

pub fn package(name: &str, env: &str, code: &[u8]) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Package",
        "metadata": {"name": name},
        "spec": {
            "environment": {"name": env},
            "deployment": {
                "type": "literal",
                "literal": base64::engine::general_purpose::STANDARD.encode(code),
                "filename": "hello.py"
            }
        }
    })
}

pub fn function(name: &str, env: &str, pkg: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "environment": {"name": env},
            "package": {"packageref": {"name": pkg}, "functionName": "hello.main"}
        }
    })
}

pub fn trigger(name: &str, url: &str, function: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "HttpTrigger",
        "metadata": {"name": name},
        "spec": {"relativeurl": url, "methods": ["GET"], "functionref": {"type": "name", "name": function}}
    })
}

/// Reads NDJSON lines from a streaming HTTP response.
pub struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next line as JSON, waiting at most 10 s.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                    return serde_json::from_slice(&line[..line.len() - 1]).unwrap();
                }
                let chunk = self.response.chunk().await.unwrap().expect("stream ended");
                self.buffer.extend_from_slice(&chunk);
            }
        })
        .await
        .expect("timed out waiting for a line")
    }

    /// The next line that is not a bookmark.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] != "Bookmark" {
                return v;
            }
        }
    }
}
