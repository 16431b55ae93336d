//! A router and a pool manager in separate roles, talking over real loopback sockets: the
//! executor's HTTP API (`kappa_executor::ExecutorApi`) on one side, `RemoteProvisioner` and
//! `EndpointFeeder` on the other, with the local backend running the real Python runtime.
//! They share only the store, as the roles do in a cluster (there: the CRDs).

use std::sync::Arc;
use std::time::Duration;

use kappa_archive::ArchiveStore;
use kappa_core::{EndpointIndex, FunctionId};
use kappa_executor::{ExecutorApi, ExecutorConfig, PoolManager};
use kappa_local::{CgroupMode, LocalBackend, LocalConfig, RuntimeRegistry, SandboxMode};
use kappa_logs::{LogConfig, LogStore};
use kappa_router::{EndpointFeeder, RemoteConfig, RemoteProvisioner, Router, RouterConfig};
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_types::{
    Archive, Environment, EnvironmentSpec, Function, FunctionReference, FunctionSpec, HttpTrigger,
    HttpTriggerSpec, Kind, NamedRef, Package, PackageSpec, Runtime,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use kappa_test_support::eventually_async;

const TOKEN: &str = "roles-test-token";

struct Roles {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    archives: Arc<ArchiveStore>,
    executor_index: Arc<EndpointIndex>,
    router_index: Arc<EndpointIndex>,
    executor_url: String,
    public: std::net::SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Roles {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let archives = Arc::new(ArchiveStore::open(dir.path().join("archives"), 16 << 20).unwrap());
        let logs = Arc::new(LogStore::open(dir.path().join("logs"), LogConfig::default()).unwrap());
        let runtimes =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions/runtimes");
        let backend = LocalBackend::new(
            LocalConfig {
                data_dir: dir.path().join("local"),
                runtimes: RuntimeRegistry::new(runtimes),
                sandbox: SandboxMode::None,
                helper: None,
                egress: kappa_local::EgressMode::Off,
                cgroups: CgroupMode::None,
                start_timeout: Duration::from_secs(20),
                zygote: kappa_local::ZygoteMode::Off,
                spares: 0,
            },
            Arc::clone(&archives),
            logs,
        )
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        // The executor role: pool manager + its HTTP API.
        let executor_index = Arc::new(EndpointIndex::new());
        let mut registry = prometheus_client::registry::Registry::default();
        let manager = PoolManager::new(
            ExecutorConfig {
                reconcile_interval: Duration::from_millis(200),
                ..ExecutorConfig::default()
            },
            Arc::clone(&store),
            Arc::new(backend),
            Arc::clone(&executor_index),
            Arc::clone(&archives),
            &mut registry,
        );
        let api = ExecutorApi::new(
            Arc::new(manager.clone()),
            Arc::clone(&executor_index),
            Some(TOKEN.into()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let executor_url = format!("http://{}", listener.local_addr().unwrap());
        {
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                manager.run(token, Duration::from_secs(2)).await;
            }));
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                api.serve(listener, token).await.unwrap();
            }));
        }

        // The router role: its own index, fed over HTTP.
        let router_index = Arc::new(EndpointIndex::new());
        let mut remote = RemoteConfig::new(&executor_url, "router-0");
        remote.token = Some(TOKEN.into());
        remote.usage_interval = Duration::from_millis(200);
        let provisioner =
            RemoteProvisioner::new(remote.clone(), Arc::clone(&router_index)).unwrap();
        let feeder = EndpointFeeder::new(remote, Arc::clone(&router_index)).unwrap();
        let router = Router::new(
            RouterConfig::default(),
            Arc::clone(&store),
            Arc::clone(&router_index),
            Arc::new(provisioner),
        );
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public_addr = public.local_addr().unwrap();
        {
            let token = shutdown.clone();
            let feeder = feeder.clone();
            tasks.push(tokio::spawn(async move { feeder.run(token).await }));
            let token = shutdown.clone();
            let r = router.clone();
            tasks.push(tokio::spawn(async move {
                r.serve(public, admin, token).await.unwrap();
            }));
        }
        router.wait_ready().await;
        assert!(
            feeder.wait_synced(Duration::from_secs(10)).await,
            "the feed never synced"
        );
        Self {
            _dir: dir,
            store,
            archives,
            executor_index,
            router_index,
            executor_url,
            public: public_addr,
            shutdown,
            tasks,
        }
    }

    async fn put(&self, value: serde_json::Value) {
        self.store.put(value, Precondition::None).await.unwrap();
    }

    /// An environment, a package with `source` as `name.py`, a function with `entrypoint`
    /// and a route `/name`.
    async fn deploy(&self, name: &str, source: &str, entrypoint: &str) {
        let env = Environment::new(
            "python",
            EnvironmentSpec {
                runtime: Runtime {
                    image: "python".into(),
                    command: None,
                },
                poolsize: 1,
                ..EnvironmentSpec::default()
            },
        );
        self.put(env.to_json()).await;
        let info = self.archives.put_bytes(source.as_bytes()).await.unwrap();
        let package = Package::new(
            name,
            PackageSpec {
                environment: NamedRef::new("python"),
                source: None,
                deployment: Some(Archive::stored(&info.sha256, Some(format!("{name}.py")))),
                buildcmd: None,
            },
        );
        let mut value = package.to_json();
        value["status"] = serde_json::json!({ "buildstatus": "none" });
        self.put(value).await;
        let function = Function::new(name, FunctionSpec::new("python", name, entrypoint));
        self.put(function.to_json()).await;
        let trigger = HttpTrigger::new(
            name,
            HttpTriggerSpec {
                relativeurl: Some(format!("/{name}")),
                methods: vec!["GET".into()],
                functionref: FunctionReference::name(name),
                ..HttpTriggerSpec::default()
            },
        );
        self.put(trigger.to_json()).await;
    }

    async fn get(&self, path: &str) -> (u16, String) {
        // Routes appear asynchronously: a 404 before the table has the route is retried.
        let url = format!("http://{}{path}", self.public);
        let client = reqwest::Client::new();
        let mut last = (0, String::new());
        for _ in 0..100 {
            let r = client.get(&url).send().await.unwrap();
            last = (r.status().as_u16(), r.text().await.unwrap());
            if last.0 != 404 || !last.1.contains("not_found") {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

fn ids(index: &EndpointIndex, f: &FunctionId) -> Vec<String> {
    let mut v: Vec<String> = index
        .endpoints(f)
        .iter()
        .map(|e| e.instance_id.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_through_remote_roles() {
    let roles = Roles::start().await;
    let f = FunctionId::new("default", "hello");
    roles
        .deploy(
            "hello",
            "def main():\n    return 'Hello from a remote executor\\n'\n",
            "hello.main",
        )
        .await;

    // Cold: the router asks the executor over HTTP, the feed brings the endpoint.
    let (status, body) = roles.get("/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from a remote executor\n")
    );
    let executor_ids = ids(&roles.executor_index, &f);
    assert_eq!(executor_ids.len(), 1);
    assert_eq!(
        ids(&roles.router_index, &f),
        executor_ids,
        "the router mirrors the executor"
    );

    // Warm: the same instance, no new one.
    for _ in 0..5 {
        let (status, _) = roles.get("/hello").await;
        assert_eq!(status, 200);
    }
    assert_eq!(ids(&roles.executor_index, &f), executor_ids);

    // Usage reports mark the executor's endpoint as used (idle reaping reads it).
    let executor_endpoint = roles.executor_index.endpoints(&f).pop().unwrap();
    eventually_async(
        Duration::from_secs(15),
        "usage reported to the executor",
        || {
            let e = Arc::clone(&executor_endpoint);
            async move { e.served() > 0 }
        },
    )
    .await;

    // Deleting the function drains and removes the instance on both sides.
    roles
        .store
        .delete(Kind::Function, "default", "hello", Precondition::None)
        .await
        .unwrap();
    eventually_async(
        Duration::from_secs(15),
        "the instance leaves both indexes",
        || {
            let done = roles.executor_index.endpoints(&f).is_empty()
                && roles.router_index.endpoints(&f).is_empty();
            async move { done }
        },
    )
    .await;
    roles.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_errors_cross_the_wire_with_their_cause() {
    let roles = Roles::start().await;
    roles
        .deploy("broken", "def main():\n    return 'x'\n", "broken.nope")
        .await;
    let (status, body) = roles.get("/broken").await;
    assert_eq!(status, 500, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "specialize_failed", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "the runtime's message reaches the client: {body}"
    );

    // The executor API refuses calls without the token.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/provision", roles.executor_url))
        .json(&serde_json::json!({"namespace":"default","name":"broken","generation":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    roles.stop().await;
}
