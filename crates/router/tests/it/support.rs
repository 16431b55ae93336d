//! Test harness: a router on real loopback sockets over a `MemoryStore`, a provisioner that
//! starts real tiny hyper upstreams, an HTTP client and a bounded `eventually`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kappa_core::{Endpoint, EndpointIndex, FunctionId, Provision, ProvisionError, Provisioner};
use kappa_router::{Router, RouterConfig};
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_test_support::eventually_async;
use kappa_types::{Function, FunctionReference, FunctionSpec, HttpTrigger, HttpTriggerSpec, Kind};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Signals between a test and its upstream for the streaming test.
#[derive(Default)]
pub struct StreamProbe {
    /// The upstream received the first chunk of the request body.
    pub upstream_got_first: Notify,
    /// The client received the first chunk of the response body.
    pub client_got_first: Notify,
    /// Bytes the upstream received.
    pub received: AtomicUsize,
}

/// A tiny runtime-like HTTP server. Its behaviour is chosen per request by `x-test-*` headers.
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    pub requests: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// The endpoint the provisioner made for it (for `x-test-crash`).
    pub endpoint: OnceLock<Arc<Endpoint>>,
    /// Requests with `x-test-gate` wait for a permit here.
    pub gate: Semaphore,
    /// Requests with `x-test-gate` that are waiting.
    pub gated: AtomicUsize,
    pub probe: Arc<StreamProbe>,
    /// Response size (bytes) for `x-test-stream`.
    pub stream_bytes: usize,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl Upstream {
    pub async fn start(id: impl Into<String>) -> Arc<Self> {
        Self::start_with(id, Arc::new(StreamProbe::default()), 0).await
    }

    pub async fn start_with(
        id: impl Into<String>,
        probe: Arc<StreamProbe>,
        stream_bytes: usize,
    ) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Arc::new(Self {
            id: id.into(),
            addr: listener.local_addr().unwrap(),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            endpoint: OnceLock::new(),
            gate: Semaphore::new(0),
            gated: AtomicUsize::new(0),
            probe,
            stream_bytes,
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&up);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let Some(up) = weak.upgrade() else { return };
                up.connections.fetch_add(1, Ordering::SeqCst);
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let up = Arc::clone(&up);
                        async move { up.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *up.task.lock().unwrap() = Some(task);
        up
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<TestBody>, std::io::Error> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let flag = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(ms) = flag("x-test-sleep-ms") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if flag("x-test-gate").is_some() {
            self.gated.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.gated.fetch_sub(1, Ordering::SeqCst);
        }
        if flag("x-test-hold-body").is_some() {
            // The head goes out at once; the body (and so the request's slot) waits for the gate.
            self.gated.fetch_add(1, Ordering::SeqCst);
            let up = Arc::clone(&self);
            let body = futures::stream::once(async move {
                up.gate.acquire().await.unwrap().forget();
                up.gated.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"done")))
            });
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(body))));
        }
        if flag("x-test-crash").is_some() {
            // Like a backend: the exit is reported a moment after the connection dropped.
            if let Some(endpoint) = self.endpoint.get().cloned() {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    endpoint.set_exit("exited with signal 9 (out of memory)");
                });
            }
            return Err(std::io::Error::other("crashed"));
        }
        if flag("x-test-close").is_some() {
            return Err(std::io::Error::other("closed"));
        }
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status: u16 = flag("x-test-status").map_or(200, |s| s.parse().unwrap());
        let stream = flag("x-test-stream").is_some();
        let empty_body = flag("x-test-empty").is_some();
        let mut body = req.into_body();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                if len == 0 && !data.is_empty() {
                    self.probe.upstream_got_first.notify_one();
                }
                len += data.len();
                self.probe.received.store(len, Ordering::SeqCst);
            }
        }
        if empty_body {
            // The status alone, with an empty body.
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            return Ok(response);
        }
        if stream {
            return Ok(Response::new(stream_body(
                self.stream_bytes,
                Some(Arc::clone(&self.probe)),
            )));
        }
        let json = serde_json::json!({
            "instance": self.id,
            "method": method,
            "path": path,
            "headers": headers,
            "bodyLen": len,
        });
        let mut response = Response::new(full(serde_json::to_vec(&json).unwrap()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
            .headers_mut()
            .insert("connection", "keep-alive".parse().unwrap());
        Ok(response)
    }
}

const CHUNK: usize = 64 * 1024;

/// `total` bytes in 64 KiB chunks; with a probe, pauses after the first chunk until the probe's
/// `client_got_first` (request direction: `upstream_got_first`) is signalled.
pub fn stream_body(total: usize, probe: Option<Arc<StreamProbe>>) -> TestBody {
    stream_body_waiting(total, probe, false)
}

/// Like [`stream_body`], for the client side: waits on `upstream_got_first`.
pub fn client_stream_body(total: usize, probe: Arc<StreamProbe>) -> TestBody {
    stream_body_waiting(total, Some(probe), true)
}

fn stream_body_waiting(
    total: usize,
    probe: Option<Arc<StreamProbe>>,
    client_side: bool,
) -> TestBody {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures::stream::unfold(0usize, move |sent| {
        let chunk = chunk.clone();
        let probe = probe.clone();
        async move {
            if sent >= total {
                return None;
            }
            if sent == CHUNK.min(total)
                && let Some(probe) = &probe
            {
                if client_side {
                    probe.upstream_got_first.notified().await;
                } else {
                    probe.client_got_first.notified().await;
                }
            }
            let n = CHUNK.min(total - sent);
            Some((Ok::<_, BoxError>(Frame::data(chunk.slice(..n))), sent + n))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// What the provisioner does for one function.
#[derive(Clone)]
pub struct Plan {
    pub max_instances: usize,
    pub capacity: u32,
    pub error: Option<ProvisionError>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            max_instances: 4,
            capacity: 8,
            error: None,
        }
    }
}

/// A provisioner that starts a real upstream per instance and counts its calls.
pub struct TestProvisioner {
    index: Arc<EndpointIndex>,
    pub calls: AtomicUsize,
    plans: Mutex<HashMap<FunctionId, (Plan, usize)>>,
    pub upstreams: Mutex<Vec<Arc<Upstream>>>,
}

impl TestProvisioner {
    pub fn new(index: Arc<EndpointIndex>) -> Self {
        Self {
            index,
            calls: AtomicUsize::new(0),
            plans: Mutex::new(HashMap::new()),
            upstreams: Mutex::new(Vec::new()),
        }
    }

    pub fn plan(&self, function: &str, plan: Plan) {
        self.plans
            .lock()
            .unwrap()
            .insert(FunctionId::new("default", function), (plan, 0));
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The upstream started under this instance id.
    pub fn upstream(&self, id: &str) -> Arc<Upstream> {
        let ups = self.upstreams.lock().unwrap();
        Arc::clone(ups.iter().find(|u| u.id == id).unwrap())
    }
}

#[async_trait::async_trait]
impl Provisioner for TestProvisioner {
    async fn provision(
        &self,
        function: &FunctionId,
        generation: i64,
    ) -> Result<Provision, ProvisionError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (n, capacity) = {
            let mut plans = self.plans.lock().unwrap();
            let (plan, started) = plans
                .entry(function.clone())
                .or_insert_with(|| (Plan::default(), 0));
            if let Some(error) = &plan.error {
                return Err(error.clone());
            }
            if *started >= plan.max_instances {
                return Ok(Provision::AtCapacity);
            }
            *started += 1;
            (*started, plan.capacity)
        };
        let id = format!("{}-g{generation}-{n}", function.name);
        let up = Upstream::start(id.clone()).await;
        let endpoint = Arc::new(Endpoint::new(id, up.addr, generation, capacity));
        up.endpoint.set(Arc::clone(&endpoint)).unwrap();
        self.upstreams.lock().unwrap().push(up);
        self.index.insert(function, endpoint);
        Ok(Provision::Added)
    }
}

/// A router serving on loopback ports.
pub struct Harness {
    pub store: Arc<MemoryStore>,
    pub index: Arc<EndpointIndex>,
    pub provisioner: Arc<TestProvisioner>,
    pub router: Router,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub serving: Option<JoinHandle<Result<(), kappa_router::RouterError>>>,
    /// The platform token the router requires on its debug views, if any.
    pub token: Option<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(RouterConfig::default()).await
    }

    pub async fn start_with(config: RouterConfig) -> Self {
        let index = Arc::new(EndpointIndex::new());
        let provisioner = Arc::new(TestProvisioner::new(Arc::clone(&index)));
        let asked = Arc::clone(&provisioner) as Arc<dyn Provisioner>;
        Self::start_parts(config, index, asked, provisioner).await
    }

    /// A router admitting on `index` and asking `provisioner` on a miss (the harness's own
    /// `TestProvisioner` is then unused).
    pub async fn start_on(index: Arc<EndpointIndex>, provisioner: Arc<dyn Provisioner>) -> Self {
        let unused = Arc::new(TestProvisioner::new(Arc::clone(&index)));
        Self::start_parts(RouterConfig::default(), index, provisioner, unused).await
    }

    async fn start_parts(
        config: RouterConfig,
        index: Arc<EndpointIndex>,
        asked: Arc<dyn Provisioner>,
        provisioner: Arc<TestProvisioner>,
    ) -> Self {
        let store = Arc::new(MemoryStore::new());
        let token = config.internal_token.clone();
        let router = Router::new(
            config,
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::clone(&index),
            asked,
        );
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let serving = {
            let router = router.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { router.serve(public, admin, shutdown).await })
        };
        tokio::time::timeout(Duration::from_secs(10), router.wait_ready())
            .await
            .expect("router ready");
        Self {
            store,
            index,
            provisioner,
            router,
            public: public_addr,
            admin: admin_addr,
            shutdown,
            serving: Some(serving),
            token,
        }
    }

    /// Creates or replaces a function in the default namespace.
    pub async fn put_function(&self, name: &str, timeout_s: u64) {
        let mut spec = FunctionSpec::new("python", "pkg", "main.main");
        spec.function_timeout = timeout_s;
        let f = Function::new(name, spec);
        self.store
            .put(f.to_json(), Precondition::None)
            .await
            .unwrap();
        self.wait_function(name).await;
    }

    /// A function with one instance of capacity one, routed at `/{name}` by trigger `t`: for
    /// tests that hold its only slot.
    pub async fn put_one_slot_function(&self, name: &str, timeout_s: u64) {
        self.provisioner.plan(
            name,
            Plan {
                max_instances: 1,
                capacity: 1,
                error: None,
            },
        );
        self.put_function(name, timeout_s).await;
        let url = format!("/{name}");
        self.put_trigger("t", name, move |s| s.relativeurl = Some(url))
            .await;
    }

    /// Waits until a request holds the only slot of a one-slot function (its upstream is
    /// gated on it).
    pub async fn wait_only_slot_held(&self, what: &str) {
        eventually_async(Duration::from_secs(15), what, || async {
            self.provisioner
                .upstreams
                .lock()
                .unwrap()
                .first()
                .is_some_and(|u| u.gated.load(Ordering::SeqCst) == 1)
        })
        .await;
    }

    /// Creates or replaces a trigger to `function` and waits until the router has it.
    pub async fn put_trigger(
        &self,
        name: &str,
        function: &str,
        edit: impl FnOnce(&mut HttpTriggerSpec),
    ) {
        let mut spec = HttpTriggerSpec {
            functionref: FunctionReference::name(function),
            ..HttpTriggerSpec::default()
        };
        edit(&mut spec);
        let t = HttpTrigger::new(name, spec);
        self.store
            .put(t.to_json(), Precondition::None)
            .await
            .unwrap();
        let full = format!("default/{name}");
        let want = t.spec.clone();
        self.wait_routes(&format!("trigger {name}"), move |routes| {
            routes["routes"].as_array().unwrap().iter().any(|r| {
                r["trigger"] == full.as_str()
                    && r["relativeurl"].as_str() == want.relativeurl.as_deref()
                    && r["prefix"].as_str() == want.prefix.as_deref()
                    && r["host"].as_str() == want.host.as_deref()
            })
        })
        .await;
    }

    pub async fn delete(&self, kind: Kind, name: &str) {
        self.store
            .delete(kind, "default", name, Precondition::None)
            .await
            .unwrap();
    }

    pub async fn wait_function(&self, name: &str) {
        let stored = self
            .store
            .get(Kind::Function, "default", name)
            .await
            .unwrap()
            .unwrap();
        let generation = stored.value["metadata"]["generation"].as_i64().unwrap();
        let full = format!("default/{name}");
        self.wait_routes(&format!("function {name}"), move |routes| {
            routes["functions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == full.as_str() && f["generation"] == generation)
        })
        .await;
    }

    pub async fn wait_routes(&self, what: &str, check: impl Fn(&Value) -> bool) {
        eventually_async(Duration::from_secs(15), what, || async {
            let (status, _, body) = self.admin_get("/debug/routes", self.token.as_deref()).await;
            status == StatusCode::OK && check(&serde_json::from_slice(&body).unwrap())
        })
        .await;
    }

    pub async fn admin_get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::get(path).header("host", "admin");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        send(self.admin, req.body(empty()).unwrap()).await
    }

    /// A GET on the public listener.
    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.request(
            Request::get(path)
                .header("host", "test")
                .body(empty())
                .unwrap(),
        )
        .await
    }

    pub async fn request(&self, req: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
        send(self.public, req).await
    }

    /// Stops serving and returns what `serve` returned.
    pub async fn stop(&mut self) -> Result<(), kappa_router::RouterError> {
        self.shutdown.cancel();
        self.serving.take().unwrap().await.unwrap()
    }
}

/// Sends one request on a new connection and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
    let response = send_head(addr, req).await;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

/// Sends one request on a new connection and returns the response head with its streaming body.
pub async fn send_head(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// A keep-alive client connection for several requests.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.sender.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "test")
            .body(empty())
            .unwrap();
        let response = self.sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }
}

/// The echo upstream's JSON.
pub fn echo(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not echo JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A router-written JSON error: asserts its shape and invocation id; returns (code, message).
/// The code of an admin listener's JSON error (no invocation id: no function was involved).
pub fn admin_error(headers: &HeaderMap, body: &Bytes) -> String {
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

pub fn error_of(headers: &HeaderMap, body: &Bytes) -> (String, String) {
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(body).unwrap();
    let id = headers["x-kappa-invocation-id"].to_str().unwrap();
    assert_eq!(
        v["error"]["invocationId"], id,
        "error body names the invocation"
    );
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// Asserts a response carries a well-formed invocation id.
pub fn assert_invocation_id(headers: &HeaderMap) {
    let id = headers
        .get("x-kappa-invocation-id")
        .expect("x-kappa-invocation-id on every response")
        .to_str()
        .unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}
