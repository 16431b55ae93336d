//! `kappa up`: the whole platform in one process (API server, embedded store, pool manager with
//! the local backend, router), with the bundled example deployed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kappa_api::{ApiState, Invoker, RouteSync};
use kappa_archive::ArchiveStore;
use kappa_core::{EndpointIndex, FunctionId};
use kappa_executor::{ExecutorConfig, PoolManager};
use kappa_local::{
    CgroupMode, EgressMode, LocalBackend, LocalConfig, RuntimeRegistry, SandboxMode, ZygoteMode,
};
use kappa_logs::{LogConfig, LogStore};
use kappa_router::{Router, RouterConfig};
use kappa_store::{Precondition, RedbStore, Store, StoreError};
use kappa_types::{
    Archive, Environment, EnvironmentSpec, Function, FunctionReference, FunctionSpec, HttpTrigger,
    HttpTriggerSpec, Package, PackageSpec, Resource, Runtime, Spec,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The Python runtime server, shipped inside the binary so `kappa up` needs nothing else.
const PYTHON_RUNTIME: &str = include_str!("../../../functions/runtimes/python/server.py");
/// The Python runtime's template process (`server.py --zygote`), next to the server.
const PYTHON_ZYGOTE: &str = include_str!("../../../functions/runtimes/python/zygote.py");
/// The Node.js runtime server (run with the machine's `node`).
const NODEJS_RUNTIME: &str = include_str!("../../../functions/runtimes/nodejs/server.js");
/// The binary (CGI-style) runtime server (run with `python3`).
const BINARY_RUNTIME: &str = include_str!("../../../functions/runtimes/binary/server.py");
/// The example deployed by `kappa up`.
const HELLO_PY: &str = include_str!("../../../functions/examples/hello/hello.py");

/// Flags of `kappa up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the store, archives, logs and instances live [default: $HOME/.kappa].
    #[arg(long, env = "KAPPA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The public router's listen address.
    #[arg(long, env = "KAPPA_ROUTER_ADDR", default_value = "127.0.0.1:8888")]
    pub router_addr: SocketAddr,
    /// The API server's listen address.
    #[arg(long, env = "KAPPA_API_ADDR", default_value = "127.0.0.1:8890")]
    pub api_addr: SocketAddr,
    /// The router's admin listener (health, metrics, internal invoke).
    #[arg(long, env = "KAPPA_ADMIN_ADDR", default_value = "127.0.0.1:8889")]
    pub admin_addr: SocketAddr,
    /// Require the API token on /metrics of the API server and the router's admin listener
    /// (/debug/* always requires it; /healthz and /readyz never do).
    #[arg(long, env = "KAPPA_METRICS_NEED_TOKEN")]
    pub metrics_need_token: bool,
    /// Do not deploy the bundled hello example.
    #[arg(long)]
    pub no_example: bool,
    /// Isolation of functions: namespaces (the built-in sandbox: own namespaces and user per
    /// instance; needs root) or none (unsandboxed, explicit only).
    #[arg(long, env = "KAPPA_SANDBOX", default_value = "namespaces")]
    pub sandbox: SandboxMode,
    /// Network egress of sandboxed functions: auto (through slirp4netns when installed) or off.
    #[arg(long, env = "KAPPA_EGRESS", default_value = "auto")]
    pub egress: EgressMode,
    /// Resource limits through cgroups: auto, v2, v1 or none.
    #[arg(long, env = "KAPPA_CGROUPS", default_value = "auto")]
    pub cgroups: CgroupMode,
    /// Sandboxed Python instances forked from a template process per environment (on), or
    /// every runtime started by exec (off).
    #[arg(long, env = "KAPPA_ZYGOTE", default_value = "on")]
    pub zygote: ZygoteMode,
    /// Requests that may wait per function when it is at capacity (then 429).
    #[arg(long, env = "KAPPA_QUEUE_LIMIT", default_value_t = 100)]
    pub queue_limit: usize,
    /// Largest request body the router forwards, in MiB.
    #[arg(long, env = "KAPPA_MAX_BODY_MB", default_value_t = 64)]
    pub max_body_mb: u64,
    /// Largest archive the API accepts, in MiB.
    #[arg(long, env = "KAPPA_MAX_ARCHIVE_MB", default_value_t = 256)]
    pub max_archive_mb: u64,
    /// Most instances (warm and specialized) at once.
    #[arg(long, env = "KAPPA_MAX_INSTANCES", default_value_t = 256)]
    pub max_instances: usize,
    /// Memory the warm pools may hold in all (pool size x each environment's memory limit, or
    /// 128MiB without one), e.g. 1GiB: fixed pools count first, adaptive pools
    /// (poolPolicy.mode adaptive) share the rest by demand [default: unbounded].
    #[arg(long, env = "KAPPA_POOL_MEMORY_BUDGET", value_name = "SIZE", value_parser = crate::output::parse_memory_size)]
    pub pool_memory_budget: Option<u64>,
    /// Seconds to drain in-flight requests and stop instances on shutdown.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Seconds a package build may run before it is killed (and fails).
    #[arg(long, env = "KAPPA_BUILD_TIMEOUT", default_value_t = 600)]
    pub build_timeout: u64,
    /// Package builds that run at once.
    #[arg(long, env = "KAPPA_BUILD_PARALLELISM", default_value_t = 2)]
    pub build_parallelism: usize,
    /// The NATS server (JetStream) of message-queue triggers without `metadata.url`.
    #[arg(long, env = "KAPPA_NATS_URL", default_value = kappa_triggers::DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// The Redis server of message-queue triggers without `metadata.url`.
    #[arg(long, env = "KAPPA_REDIS_URL", default_value = kappa_triggers::DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// How long finished asynchronous invocations (and their outcomes) are kept.
    #[arg(long, env = "KAPPA_ASYNC_RETENTION", default_value = "24h", value_parser = crate::output::parse_duration)]
    pub async_retention: Duration,
    /// An upgraded (WebSocket) connection with no byte either way for this long is closed.
    #[arg(long, env = "KAPPA_UPGRADE_IDLE_TIMEOUT", default_value = "10m", value_parser = crate::output::parse_duration)]
    pub upgrade_idle_timeout: Duration,
    /// The Kafka cluster of message-queue triggers without `metadata.bootstrapServers`:
    /// `kafka://host:port[,host:port...]` (or `host:port,...`).
    #[arg(long, env = "KAPPA_KAFKA_URL", default_value = kappa_triggers::DEFAULT_KAFKA_URL)]
    pub kafka_url: String,
}

/// The default data directory: `$HOME/.kappa`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".kappa")
}

/// Runs the platform until SIGINT/SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let token = load_or_create_token(&data_dir)?;

    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(data_dir.join("kappa.redb"))
            .with_context(|| format!("opening the store in {}", data_dir.display()))?,
    );
    let archives = Arc::new(
        ArchiveStore::open(data_dir.join("archives"), args.max_archive_mb << 20)
            .context("opening the archive store")?,
    );
    let logs = Arc::new(
        LogStore::open(data_dir.join("logs"), LogConfig::default())
            .context("opening the log store")?,
    );
    let runtimes_dir = install_runtimes(&data_dir)?;

    // The sandbox helper is this executable (see `main`).
    let helper = std::env::current_exe().context("locating the kappa executable")?;
    let backend = LocalBackend::new(
        LocalConfig {
            data_dir: data_dir.join("local"),
            runtimes: RuntimeRegistry::new(runtimes_dir.clone()),
            sandbox: args.sandbox,
            helper: Some(helper.clone()),
            egress: args.egress,
            cgroups: args.cgroups,
            start_timeout: Duration::from_secs(10),
            zygote: args.zygote,
        },
        Arc::clone(&archives),
        Arc::clone(&logs),
    )
    .await
    .context("starting the local instance backend")?;

    let isolation = match (backend.sandboxed(), backend.egress()) {
        (true, true) => {
            "sandboxed (own namespaces and user per instance; egress through slirp4netns)"
        }
        (true, false) => "sandboxed (own namespaces and user per instance; no egress)",
        (false, _) => {
            "UNSANDBOXED: functions run as this user with access to everything it can reach"
        }
    };
    // Source packages are built in the same sandbox and limits as instances.
    let build_sandbox = kappa_local::BuildSandbox::new(
        args.sandbox,
        Some(&helper),
        args.egress,
        args.cgroups,
        &data_dir.join("builds-sandbox"),
    )
    .await
    .context("starting the build sandbox")?;
    let builder = kappa_builder::Builder::new(
        kappa_builder::BuilderConfig {
            timeout: Duration::from_secs(args.build_timeout.max(1)),
            parallelism: args.build_parallelism.max(1),
            ..kappa_builder::BuilderConfig::new(data_dir.join("builds"))
        },
        Arc::clone(&store),
        Arc::clone(&archives),
        Arc::new(build_sandbox),
        RuntimeRegistry::new(runtimes_dir.clone()),
    )
    .context("starting the package builder")?;

    let index = Arc::new(EndpointIndex::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let manager = PoolManager::new(
        ExecutorConfig {
            max_instances: args.max_instances,
            pool_memory_budget: args.pool_memory_budget,
            ..ExecutorConfig::default()
        },
        Arc::clone(&store),
        Arc::new(backend),
        Arc::clone(&index),
        Arc::clone(&archives),
        &mut registry,
    );
    let trigger_metrics = kappa_triggers::TriggerMetrics::new(&mut registry);
    let router = Router::new(
        RouterConfig {
            queue_limit: args.queue_limit,
            max_body_bytes: args.max_body_mb << 20,
            internal_token: Some(token.clone()),
            metrics_need_token: args.metrics_need_token,
            upgrade_idle_timeout: args.upgrade_idle_timeout,
            ..RouterConfig::default()
        },
        Arc::clone(&store),
        Arc::clone(&index),
        Arc::new(manager.clone()),
    );

    let public = bind(args.router_addr, "router").await?;
    let admin = bind(args.admin_addr, "router admin").await?;
    let api = bind(args.api_addr, "API").await?;
    let router_url = format!("http://{}", public.local_addr()?);
    let api_url = format!("http://{}", api.local_addr()?);
    let admin_url = format!("http://{}", admin.local_addr()?);

    // The API server's /metrics serves the pool manager's and the trigger workers' metrics along
    // with its own.
    let state = ApiState::new(Arc::clone(&store), Arc::clone(&archives), Arc::clone(&logs))
        .with_metrics(Arc::new(kappa_api::ApiMetrics::with_registry(registry)))
        .with_token(token.clone())
        .with_metrics_need_token(args.metrics_need_token)
        .with_invoker(Arc::new(RouterInvoker(router.clone())))
        .with_instances(Arc::new(manager.clone()))
        .with_stats(router.stats())
        .with_route_sync(Arc::new(RouterInvoker(router.clone())))
        .with_router_url(router_url.clone())
        .with_runtime_check(Arc::new(LocalRuntimes(RuntimeRegistry::new(runtimes_dir))))
        .with_archive_gc(kappa_api::ArchiveGc::default());

    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(args.shutdown_grace);
    let manager_task = {
        let manager = manager.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { manager.run(token, grace).await })
    };
    let builder_task = {
        let token = shutdown.clone();
        tokio::spawn(async move { builder.run(token).await })
    };
    // Canaries measure this process's router.
    let canary_task = {
        let controller = kappa_executor::CanaryController::new(
            Arc::clone(&store),
            router.outcomes() as Arc<dyn kappa_core::OutcomeSource>,
        );
        let token = shutdown.clone();
        tokio::spawn(async move { controller.run(token).await })
    };
    let router_task = {
        let router = router.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { router.serve(public, admin, token).await })
    };
    let api_task = {
        let token = shutdown.clone();
        tokio::spawn(async move { kappa_api::serve(api, state, token).await })
    };

    router.wait_ready().await;
    // Event triggers start once the router serves, so their first invocations find it ready.
    let triggers_task = {
        let triggers = kappa_triggers::TriggerManager::new(
            kappa_triggers::ManagerConfig {
                nats_url: args.nats_url.clone(),
                redis_url: args.redis_url.clone(),
                kafka_url: args.kafka_url.clone(),
                ..kappa_triggers::ManagerConfig::default()
            },
            Arc::clone(&store),
            Arc::new(RouterInvoker(router.clone())),
        )
        .with_registered_metrics(trigger_metrics);
        let token = shutdown.clone();
        tokio::spawn(async move { triggers.run(token).await })
    };
    // Asynchronous invocations: one process per data directory, so a lease held by an earlier
    // process of this node ("local") is taken over at once after a restart.
    let async_task = {
        let worker = Arc::new(kappa_triggers::AsyncWorker::new(
            kappa_triggers::AsyncConfig {
                node: "local".into(),
                retention: args.async_retention,
                nats_url: args.nats_url.clone(),
                redis_url: args.redis_url.clone(),
                kafka_url: args.kafka_url.clone(),
                ..kappa_triggers::AsyncConfig::default()
            },
            Arc::clone(&store),
            Arc::new(RouterInvoker(router.clone())),
            Arc::new(kappa_triggers::DefaultConnector),
        ));
        let token = shutdown.clone();
        tokio::spawn(async move { worker.run(token).await })
    };
    if !args.no_example {
        deploy_example(store.as_ref(), &archives)
            .await
            .context("deploying the bundled hello example")?;
        // The curl printed below must work at once: wait until the router serves the route
        // (the version of the trigger's last write, which the router has seen once it applied it).
        let version = store
            .get(kappa_types::Kind::HttpTrigger, "default", "hello")
            .await
            .context("reading the bundled example's route")?
            .map_or(0, |trigger| trigger.resource_version);
        if !router.wait_applied(version, Duration::from_secs(10)).await {
            tracing::warn!("the router has not applied the bundled example's route yet");
        }
    }

    // Written last: its presence tells scripts (and the CLI) that everything announced below
    // is served, the example's route included.
    write_client_config(&data_dir, &api_url, &token, &router_url)?;

    println!("Kappa is up.");
    println!("  router  {router_url}");
    println!(
        "  api     {api_url}   (token and URL in {})",
        data_dir.join("client.json").display()
    );
    println!("  dashboard {api_url}/ui   (sign in with the token)");
    println!("  admin   {admin_url}   (/healthz, /readyz, /metrics)");
    println!("  data    {}", data_dir.display());
    println!("  isolation {isolation}");
    if !args.no_example {
        println!();
        println!("Try it:");
        println!("  curl {router_url}/hello");
    }
    println!();
    println!("Press Ctrl-C to stop.");
    tracing::info!(router = %router_url, api = %api_url, admin = %admin_url, data_dir = %data_dir.display(), "kappa is up");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let stop = async {
        let _ = triggers_task.await;
        let _ = canary_task.await;
        let _ = async_task.await;
        let _ = router_task.await;
        let _ = api_task.await;
        let _ = manager_task.await;
        let _ = builder_task.await;
    };
    if tokio::time::timeout(grace + Duration::from_secs(5), stop)
        .await
        .is_err()
    {
        tracing::warn!("shutdown took longer than the grace period");
    }
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr} (is another kappa running? choose another address with the flag)"))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The API token: read from `<data-dir>/token`, created (mode 0600) on first start.
fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// `<data-dir>/client.json`, which the CLI reads to find the API (mode 0600: it holds the token).
fn write_client_config(
    data_dir: &Path,
    api_url: &str,
    token: &str,
    router_url: &str,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let body = serde_json::json!({ "apiUrl": api_url, "token": token, "routerUrl": router_url });
    let tmp = data_dir.join("client.json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
    std::fs::rename(&tmp, data_dir.join("client.json")).context("writing client.json")?;
    Ok(())
}

/// Writes the built-in runtimes into `<data-dir>/runtimes/` (refreshed on every start, so an
/// upgraded binary brings its runtime along).
fn install_runtimes(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("runtimes");
    let target = install_runtime_file(&dir, "python", "server.py", PYTHON_RUNTIME)?;
    install_runtime_file(&dir, "python", "zygote.py", PYTHON_ZYGOTE)?;
    precompile_python_runtime(&target);
    install_runtime_file(&dir, "nodejs", "server.js", NODEJS_RUNTIME)?;
    install_runtime_file(&dir, "binary", "server.py", BINARY_RUNTIME)?;
    Ok(dir)
}

/// Writes `<dir>/<runtime>/<file>` atomically (write then rename) and returns its path.
fn install_runtime_file(
    dir: &Path,
    runtime: &str,
    file: &str,
    contents: &str,
) -> anyhow::Result<PathBuf> {
    let sub = dir.join(runtime);
    std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
    let target = sub.join(file);
    let tmp = sub.join(format!("{file}.tmp"));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
    Ok(target)
}

/// Compiles the Python runtime's code cache on the host: sandboxed instances see the runtime
/// directory read-only and could not write it, and without it every instance start pays the
/// compilation again. Uses the interpreter the local backend prefers.
fn precompile_python_runtime(server: &Path) {
    let python = if Path::new("/usr/bin/python3").exists() {
        PathBuf::from("/usr/bin/python3")
    } else {
        PathBuf::from("python3")
    };
    match std::process::Command::new(&python)
        .arg(server)
        .arg("--precompile")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "precompiling the python runtime failed; instances will start more slowly"
        ),
        Err(e) => {
            tracing::warn!(python = %python.display(), error = %e, "python3 not found; the python runtime cannot start")
        }
    }
}

/// Creates the `python` environment, the `hello` function and the `/hello` route unless they
/// exist (a restart keeps what the user changed).
async fn deploy_example(store: &dyn Store, archives: &ArchiveStore) -> anyhow::Result<()> {
    let env = Environment::new(
        "python",
        EnvironmentSpec {
            runtime: Runtime {
                image: "python".into(),
                command: None,
            },
            ..EnvironmentSpec::default()
        },
    );
    create_if_missing(store, &env).await?;
    let info = archives.put_bytes(HELLO_PY.as_bytes()).await?;
    let package = Package::new(
        "hello",
        PackageSpec {
            environment: kappa_types::NamedRef::new("python"),
            source: None,
            deployment: Some(Archive::stored(&info.sha256, Some("hello.py".into()))),
            buildcmd: None,
        },
    );
    let mut package_value = package.to_json();
    package_value["status"] = serde_json::json!({ "buildstatus": "none" });
    package.validate()?;
    match store.put(package_value, Precondition::MustNotExist).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let function = Function::new("hello", FunctionSpec::new("python", "hello", "hello.main"));
    create_if_missing(store, &function).await?;
    let trigger = HttpTrigger::new(
        "hello",
        HttpTriggerSpec {
            relativeurl: Some("/hello".into()),
            methods: vec!["GET".into()],
            functionref: FunctionReference::name("hello"),
            ..HttpTriggerSpec::default()
        },
    );
    create_if_missing(store, &trigger).await?;
    Ok(())
}

async fn create_if_missing<S: Spec>(
    store: &dyn Store,
    resource: &Resource<S>,
) -> anyhow::Result<()> {
    resource.validate()?;
    match store
        .put(resource.to_json(), Precondition::MustNotExist)
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Lets the API server's `fn test` reach functions through the router, and its writes wait
/// until the router serves them.
struct RouterInvoker(Router);

#[async_trait::async_trait]
impl RouteSync for RouterInvoker {
    async fn wait_applied(&self, version: u64) {
        if !self.0.wait_applied(version, Duration::from_secs(2)).await {
            tracing::warn!(version, "the router took more than 2 s to apply a write");
        }
    }
}

#[async_trait::async_trait]
impl Invoker for RouterInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

/// Message-queue and time triggers invoke functions through the router, with the same
/// admission, queueing and scaling as HTTP traffic.
#[async_trait::async_trait]
impl kappa_triggers::Invoke for RouterInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

/// The API's runtime check for the local backend: an Environment must name a built-in runtime
/// (or give a command), since only those can start here.
struct LocalRuntimes(RuntimeRegistry);

impl kappa_api::RuntimeCheck for LocalRuntimes {
    fn check(&self, image: &str, command: Option<&str>) -> Result<(), String> {
        if command.is_some_and(|c| !c.trim().is_empty()) || self.0.builtin_for(image).is_some() {
            return Ok(());
        }
        Err(format!(
            "{image:?} is not a runtime the local backend runs: expected one of the built-in runtimes ({}), a Fission image named after one (fission/python-env), or spec.runtime.command",
            self.0.names().join(", ")
        ))
    }
}
