//! A scripted fake of the Kubernetes API on kube's `tower-test` mock service: every request is
//! recorded, and a handler chosen by the test answers it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the code sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

impl Recorded {
    /// `"GET /api/v1/..."`
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An answer: status code and body (JSON, or raw lines for a watch).
pub enum Reply {
    Json(u16, Value),
    Raw(u16, Vec<u8>),
}

/// A Kubernetes `Status` error body.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// A watch response: one JSON event per line.
pub fn watch_lines(events: &[Value]) -> Reply {
    let mut body = Vec::new();
    for e in events {
        body.extend_from_slice(&serde_json::to_vec(e).unwrap());
        body.push(b'\n');
    }
    Reply::Raw(200, body)
}

type Handler = Box<dyn FnMut(&Recorded) -> Reply + Send>;

/// The fake API server.
#[derive(Clone)]
pub struct FakeApi {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeApi {
    /// A client whose requests `handler` answers.
    pub fn start(handler: impl FnMut(&Recorded) -> Reply + Send + 'static) -> (Client, FakeApi) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let mut handler: Handler = Box::new(handler);
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let r = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                recorded.lock().unwrap().push(r.clone());
                let (code, body) = match handler(&r) {
                    Reply::Json(code, v) => (code, serde_json::to_vec(&v).unwrap()),
                    Reply::Raw(code, b) => (code, b),
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), FakeApi { requests })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `"METHOD path"` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }

    /// Waits (bounded) until a request matching `pred` was made, and returns it.
    pub async fn eventually(&self, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        for _ in 0..500 {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no such request; saw {:#?}", self.lines());
    }
}

/// Writes an object the code builds into `target/kube-manifests/<name>.yaml`, where
/// the chart's verification script validates it with `kubernetes-validate --strict`.
pub fn write_manifest(name: &str, object: &impl serde::Serialize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kube-manifests");
    std::fs::create_dir_all(&dir).unwrap();
    // JSON is YAML; written as JSON so that timestamps stay strings (a YAML loader turns an
    // unquoted RFC 3339 time into a date, which the schema validator then rejects).
    let json = serde_json::to_string_pretty(object).unwrap();
    std::fs::write(dir.join(format!("{name}.yaml")), json).unwrap();
}
