//! `kappa server --role api|router|executor|triggers`: one component of the platform per
//! process, as the Helm chart runs them (one Deployment per role), configured from flags with
//! `KAPPA_...` environment variables as fallbacks.
//!
//! Several roles may share one process (`--role api,router,executor`): they then share the
//! store handle, which is what the embedded (redb) store needs, since only one process can open
//! its file. Across processes the roles talk over HTTP: the router asks the executor's API for
//! capacity and mirrors its endpoints (`kappa_router::remote`), the API server and the trigger
//! workers invoke functions through the router's admin listener. `--executor-url` makes the
//! router use that HTTP path even when the executor runs in the same process (tests do).
//!
//! Every process serves `/healthz`, `/readyz` (every role it runs is ready) and `/metrics` on
//! `--admin-addr`, logs its bound addresses, and on SIGTERM or SIGINT stops accepting, drains
//! in-flight requests and deletes its instances within `--shutdown-grace`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kappa_api::{ApiMetrics, ApiState, Invoker};
use kappa_archive::ArchiveStore;
use kappa_core::{EndpointIndex, FunctionId, Provisioner};
use kappa_executor::{ExecutorApi, ExecutorConfig, PoolManager};
use kappa_local::{
    CgroupMode, EgressMode, LocalBackend, LocalConfig, RuntimeRegistry, SandboxMode, ZygoteMode,
};
use kappa_logs::{LogConfig, LogStore};
use kappa_router::{
    EndpointFeeder, ReadinessGate, RemoteConfig, RemoteProvisioner, Router, RouterConfig,
};
use kappa_store::{RedbStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A component of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API (the only writer of desired state) and archive storage.
    Api,
    /// The public router (HTTP triggers, warm admission, proxy).
    Router,
    /// The pool manager with its instance backend, and its HTTP API for routers.
    Executor,
    /// Message-queue and time trigger workers.
    Triggers,
    /// The package builder: builds source packages in builder pods (Kubernetes).
    Builder,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Router => "router",
            Role::Executor => "executor",
            Role::Triggers => "triggers",
            Role::Builder => "builder",
        }
    }
}

/// Flags of `kappa server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The roles this process runs (repeat the flag or separate with commas).
    #[arg(
        long = "role",
        env = "KAPPA_ROLE",
        value_enum,
        value_delimiter = ',',
        required = true
    )]
    pub roles: Vec<Role>,
    /// Where desired state lives: `embedded:<path>` (a redb file; one process only) or
    /// `kubernetes` (the kappa.dev CRDs) [default: embedded:<data-dir>/kappa.redb].
    #[arg(long, env = "KAPPA_STORE")]
    pub store: Option<String>,
    /// Archives, logs and local instances live here.
    #[arg(long, env = "KAPPA_DATA_DIR", default_value = "/var/lib/kappa")]
    pub data_dir: PathBuf,
    /// The runtime servers for the local backend (`<dir>/python/server.py`, ...)
    /// [default: <data-dir>/runtimes].
    #[arg(long, env = "KAPPA_RUNTIMES_DIR")]
    pub runtimes_dir: Option<PathBuf>,
    /// The API bearer token (the API, the executor API and the router's internal invoke path
    /// require it).
    #[arg(long, env = "KAPPA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (e.g. a mounted Secret), instead of --token.
    #[arg(long, env = "KAPPA_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Health, readiness and metrics of every role in this process.
    #[arg(long, env = "KAPPA_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Require the token on /metrics too (the admin listener's, the API's and the router
    /// internal listener's); /healthz and /readyz stay open.
    #[arg(long, env = "KAPPA_METRICS_NEED_TOKEN")]
    pub metrics_need_token: bool,
    /// The API server's listener (role api).
    #[arg(long, env = "KAPPA_API_ADDR", default_value = "0.0.0.0:8890")]
    pub api_addr: SocketAddr,
    /// The public router listener (role router).
    #[arg(long, env = "KAPPA_ROUTER_ADDR", default_value = "0.0.0.0:8888")]
    pub router_addr: SocketAddr,
    /// The router's internal listener: token-protected invoke path and debug views (role
    /// router). Keep it inside the cluster.
    #[arg(long, env = "KAPPA_ROUTER_ADMIN_ADDR", default_value = "0.0.0.0:8889")]
    pub router_admin_addr: SocketAddr,
    /// The executor API's listener (role executor). Keep it inside the cluster.
    #[arg(long, env = "KAPPA_EXECUTOR_ADDR", default_value = "0.0.0.0:8891")]
    pub executor_addr: SocketAddr,
    /// The executor API the router uses (required for role router without role executor).
    #[arg(long, env = "KAPPA_EXECUTOR_URL")]
    pub executor_url: Option<String>,
    /// The router's internal listener as seen from the API and trigger roles, e.g.
    /// http://kappa-router-internal:8889 (for `kappa fn test` and triggers).
    #[arg(long, env = "KAPPA_ROUTER_ADMIN_URL")]
    pub router_admin_url: Option<String>,
    /// The public router URL the API reports to clients (`GET /v1/info`).
    #[arg(long, env = "KAPPA_ROUTER_URL")]
    pub router_url: Option<String>,
    /// This replica's name in the executor's usage reports [default: $HOSTNAME].
    #[arg(long, env = "KAPPA_REPLICA")]
    pub replica: Option<String>,
    /// The instance backend of role executor: local (processes) or kubernetes (pods).
    #[arg(long, env = "KAPPA_BACKEND", default_value = "local", value_parser = ["local", "kubernetes"])]
    pub backend: String,
    /// Kubernetes backend: the namespace function pods run in [default: the pod's namespace].
    #[arg(long, env = "KAPPA_FUNCTION_NAMESPACE")]
    pub function_namespace: Option<String>,
    /// Role router with --executor-url: watch the function pods in --function-namespace so an
    /// endpoint whose pod is not ready leaves the router's index at once, without waiting for
    /// the executor (true or false) [default: on when --function-namespace is set and a
    /// Kubernetes client can be built].
    #[arg(long, env = "KAPPA_POD_READINESS", value_parser = clap::builder::BoolishValueParser::new())]
    pub pod_readiness: Option<bool>,
    /// Kubernetes backend: the image of the pods' fetcher container (the kappa image).
    #[arg(long, env = "KAPPA_FETCHER_IMAGE")]
    pub fetcher_image: Option<String>,
    /// Kubernetes backend: the API server as the fetchers reach it (archive downloads).
    #[arg(long, env = "KAPPA_INTERNAL_API_URL")]
    pub internal_api_url: Option<String>,
    /// Role triggers: the default NATS server of message-queue triggers.
    #[arg(long, env = "KAPPA_NATS_URL")]
    pub nats_url: Option<String>,
    /// Role triggers: the default Redis server of message-queue triggers.
    #[arg(long, env = "KAPPA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Role triggers: the default Kafka cluster of message-queue triggers
    /// (`kafka://host:port[,host:port...]`).
    #[arg(long, env = "KAPPA_KAFKA_URL")]
    pub kafka_url: Option<String>,
    /// Isolation of local instances: namespaces (the built-in sandbox; needs root) or none
    /// (unsandboxed, explicit only).
    #[arg(long, env = "KAPPA_SANDBOX", default_value = "namespaces")]
    pub sandbox: SandboxMode,
    /// Network egress of sandboxed local instances: auto (slirp4netns when installed) or off.
    #[arg(long, env = "KAPPA_EGRESS", default_value = "auto")]
    pub egress: EgressMode,
    /// Resource limits of local instances through cgroups: auto, v2, v1 or none.
    #[arg(long, env = "KAPPA_CGROUPS", default_value = "auto")]
    pub cgroups: CgroupMode,
    /// Sandboxed local Python instances forked from a template process per environment (on),
    /// or every runtime started by exec (off).
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
    /// Most instances (warm and specialized) the executor runs at once.
    #[arg(long, env = "KAPPA_MAX_INSTANCES", default_value_t = 256)]
    pub max_instances: usize,
    /// Memory the warm pools may hold in all (pool size x each environment's memory limit, or
    /// 128MiB without one), e.g. 1GiB: fixed pools count first, adaptive pools
    /// (poolPolicy.mode adaptive) share the rest by demand [default: unbounded].
    #[arg(long, env = "KAPPA_POOL_MEMORY_BUDGET", value_name = "SIZE", value_parser = crate::output::parse_memory_size)]
    pub pool_memory_budget: Option<u64>,
    /// Seconds to drain in-flight requests and stop instances on shutdown.
    #[arg(long, env = "KAPPA_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Role triggers: how long finished asynchronous invocations are kept.
    #[arg(long, env = "KAPPA_ASYNC_RETENTION", default_value = "24h", value_parser = crate::output::parse_duration)]
    pub async_retention: Duration,
    /// Role router: an upgraded (WebSocket) connection with no byte either way for this long
    /// is closed.
    #[arg(long, env = "KAPPA_UPGRADE_IDLE_TIMEOUT", default_value = "10m", value_parser = crate::output::parse_duration)]
    pub upgrade_idle_timeout: Duration,
}

/// Readiness of one role, flipped once it serves.
#[derive(Clone)]
struct Ready {
    role: Role,
    flag: Arc<AtomicBool>,
}

/// What the process admin listener reports.
#[derive(Clone, Default)]
struct Admin {
    ready: Vec<Ready>,
    api_metrics: Option<Arc<ApiMetrics>>,
    /// The shared registry (executor and trigger metrics) when no API role serves it.
    executor_metrics: Option<Arc<prometheus_client::registry::Registry>>,
    router: Option<Router>,
    /// Checked on `/metrics` when `--metrics-need-token` is set.
    metrics_token: Option<kappa_core::TokenCheck>,
}

/// Runs the roles until SIGINT/SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut roles = args.roles.clone();
    roles.sort();
    roles.dedup();
    let has = |r: Role| roles.contains(&r);
    let token = load_token(&args)?;
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    tracing::info!(roles = ?names, "starting kappa server");

    let needs_files = has(Role::Api) || has(Role::Executor);
    if needs_files {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    }
    let kube_client = if args.store.as_deref() == Some("kubernetes") || args.backend == "kubernetes"
    {
        Some(kappa_kube::default_client().await.context(
            "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
        )?)
    } else {
        None
    };
    let store = open_store(args.store.as_deref(), &args.data_dir, kube_client.as_ref())?;
    let archives = if needs_files {
        Some(Arc::new(
            ArchiveStore::open(args.data_dir.join("archives"), args.max_archive_mb << 20)
                .context("opening the archive store")?,
        ))
    } else {
        None
    };
    let logs = if needs_files {
        Some(Arc::new(
            LogStore::open(args.data_dir.join("logs"), LogConfig::default())
                .context("opening the log store")?,
        ))
    } else {
        None
    };

    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(args.shutdown_grace);
    let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    let mut admin = Admin {
        metrics_token: args
            .metrics_need_token
            .then(|| kappa_core::TokenCheck::new(&token)),
        ..Admin::default()
    };
    let mut registry = Some(prometheus_client::registry::Registry::default());
    let mut bound: Vec<(&'static str, SocketAddr)> = Vec::new();

    // ---- executor ---------------------------------------------------------------------------
    let mut local_executor: Option<(PoolManager, Arc<EndpointIndex>)> = None;
    // The routers' request history the executor in this process collects (`/v1/stats`).
    let mut executor_stats: Option<Arc<kappa_executor::stats::ReplicaStats>> = None;
    // The router in this process, if any, for the canary controller (set when it is built).
    let local_outcomes: Arc<std::sync::OnceLock<Arc<kappa_core::Outcomes>>> =
        Arc::new(std::sync::OnceLock::new());
    if has(Role::Executor) {
        let (Some(archives), Some(logs)) = (&archives, &logs) else {
            bail!("the executor role needs the archive and log stores");
        };
        // `newdeploy` functions as a Deployment per function (Kubernetes only).
        let mut deployments: Option<Arc<dyn kappa_core::Deployments>> = None;
        let backend: Arc<dyn kappa_core::Backend> = if args.backend == "kubernetes" {
            let client = kube_client
                .clone()
                .context("--backend kubernetes needs a Kubernetes client")?;
            let fetcher_image = args.fetcher_image.clone().context(
                "--backend kubernetes needs --fetcher-image (KAPPA_FETCHER_IMAGE): the kappa image run as each pod's fetcher",
            )?;
            let api_url = args.internal_api_url.clone().context(
                "--backend kubernetes needs --internal-api-url (KAPPA_INTERNAL_API_URL): the API server as fetchers reach it",
            )?;
            let template = kappa_kube::pods::PodTemplate {
                namespace: args
                    .function_namespace
                    .clone()
                    .unwrap_or_else(kappa_kube::current_namespace),
                fetcher_image,
                created_by: replica_name(&args),
                ..kappa_kube::pods::PodTemplate::default()
            };
            let config = kappa_kube::PodBackendConfig {
                template,
                api_url,
                api_token: Some(token.clone()),
                fetcher_key: token.clone(),
                ..kappa_kube::PodBackendConfig::default()
            };
            let function_deployments = Arc::new(kappa_kube::KubeDeployments::new(
                client.clone(),
                kappa_kube::DeploymentsConfig::from(&config),
                Some(Arc::clone(&store)),
            ));
            {
                let watcher = Arc::clone(&function_deployments);
                let token = shutdown.clone();
                tasks.push((
                    "deployment pod watcher",
                    tokio::spawn(async move { watcher.watch(token).await }),
                ));
            }
            deployments = Some(function_deployments);
            let backend = Arc::new(kappa_kube::PodBackend::new(
                client,
                config,
                Some(Arc::clone(&store)),
            ));
            let watcher = Arc::clone(&backend);
            let token = shutdown.clone();
            tasks.push((
                "pod watcher",
                tokio::spawn(async move { watcher.watch_pods(token).await }),
            ));
            backend
        } else {
            let runtimes = args
                .runtimes_dir
                .clone()
                .unwrap_or_else(|| args.data_dir.join("runtimes"));
            if !runtimes.join("python").join("server.py").is_file() {
                bail!(
                    "no runtimes in {} (expected python/server.py): pass --runtimes-dir (KAPPA_RUNTIMES_DIR), e.g. the repository's functions/runtimes",
                    runtimes.display()
                );
            }
            let backend = LocalBackend::new(
                LocalConfig {
                    data_dir: args.data_dir.join("local"),
                    runtimes: RuntimeRegistry::new(runtimes),
                    sandbox: args.sandbox,
                    helper: Some(std::env::current_exe().context("locating the kappa executable")?),
                    egress: args.egress,
                    cgroups: args.cgroups,
                    start_timeout: Duration::from_secs(10),
                    zygote: args.zygote,
                },
                Arc::clone(archives),
                Arc::clone(logs),
            )
            .await
            .context("starting the local instance backend")?;
            if backend.sandboxed() {
                println!(
                    "isolation sandboxed (egress {})",
                    if backend.egress() { "on" } else { "off" }
                );
            } else {
                println!("isolation UNSANDBOXED (--sandbox none)");
            }
            Arc::new(backend)
        };
        let index = Arc::new(EndpointIndex::new());
        let manager = PoolManager::new(
            ExecutorConfig {
                max_instances: args.max_instances,
                pool_memory_budget: args.pool_memory_budget,
                ..ExecutorConfig::default()
            },
            Arc::clone(&store),
            backend,
            Arc::clone(&index),
            Arc::clone(archives),
            registry.as_mut().context("the metrics registry is gone")?,
        );
        if let Some(deployments) = deployments {
            manager.set_deployments(deployments);
        }
        let listener = bind(args.executor_addr, "executor API").await?;
        bound.push(("executor", listener.local_addr()?));
        let api = ExecutorApi::new(
            Arc::new(manager.clone()),
            Arc::clone(&index),
            Some(token.clone()),
        )
        .with_instances(Arc::new(manager.clone()));
        executor_stats = Some(api.stats());
        {
            let manager = manager.clone();
            // Functions are custom resources only with the Kubernetes store: then the
            // executor also honours their finalizer (deletes a deleted Function's pods,
            // Deployments and Secrets, then lets it go).
            let finalizer = match (args.store.as_deref(), &kube_client) {
                (Some("kubernetes"), Some(client)) => Some(kappa_kube::FunctionFinalizer::new(
                    client.clone(),
                    kappa_kube::FinalizerConfig::new(
                        args.function_namespace
                            .clone()
                            .unwrap_or_else(kappa_kube::current_namespace),
                    ),
                )),
                _ => None,
            };
            let leadership = elect(
                kube_client.as_ref(),
                "kappa-executor",
                &replica_name(&args),
                &shutdown,
            );
            // Canaries measure what every router replica reports to this executor, plus the
            // router in this process when there is one (it reports nothing).
            let canaries = kappa_executor::CanaryController::new(
                Arc::clone(&store),
                Arc::new(CanarySource {
                    executor: api.clone(),
                    local: Arc::clone(&local_outcomes),
                }),
            );
            let token = shutdown.clone();
            tasks.push((
                "pool manager",
                tokio::spawn(async move {
                    // One pool manager acts at a time: two would fight over the same pods. The
                    // finalizer controller deletes pods too, so it runs under the same lease,
                    // as does the canary controller (one writer of the routes it shifts).
                    if let Some(work) = led(leadership, token.clone(), "pool manager").await {
                        match finalizer {
                            Some(finalizer) => {
                                tokio::join!(
                                    manager.run(work.clone(), grace),
                                    finalizer.run(work.clone()),
                                    canaries.run(work)
                                );
                            }
                            None => {
                                tokio::join!(manager.run(work.clone(), grace), canaries.run(work));
                            }
                        }
                    }
                }),
            ));
            let token = shutdown.clone();
            tasks.push((
                "executor API",
                tokio::spawn(async move {
                    if let Err(e) = api.serve(listener, token).await {
                        tracing::error!(error = %e, "the executor API failed");
                    }
                }),
            ));
        }
        admin.ready.push(Ready {
            role: Role::Executor,
            flag: Arc::new(AtomicBool::new(true)),
        });
        local_executor = Some((manager, index));
    }

    // ---- router -----------------------------------------------------------------------------
    let mut router_handle: Option<Router> = None;
    if has(Role::Router) {
        let ready = Arc::new(AtomicBool::new(false));
        let replica = args
            .replica
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("router-{}", uuid::Uuid::new_v4().simple()));
        let (index, provisioner, feeder): (Arc<EndpointIndex>, Arc<dyn Provisioner>, _) = match (
            &args.executor_url,
            &local_executor,
        ) {
            (Some(url), _) => {
                let index = Arc::new(EndpointIndex::new());
                let mut config = RemoteConfig::new(url.clone(), replica);
                config.token = Some(token.clone());
                let provisioner = RemoteProvisioner::new(config.clone(), Arc::clone(&index))
                    .context("--executor-url")?;
                // The gate writes the index for the feeder and, with --pod-readiness, for the
                // pod watcher started below.
                let gate = Arc::new(ReadinessGate::new(Arc::clone(&index)));
                let feeder = EndpointFeeder::with_gate(config, gate).context("--executor-url")?;
                (index, Arc::new(provisioner), Some(feeder))
            }
            (None, Some((manager, index))) => (Arc::clone(index), Arc::new(manager.clone()), None),
            (None, None) => bail!(
                "role router needs the executor: pass --executor-url (KAPPA_EXECUTOR_URL), or run role executor in this process"
            ),
        };
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
            index,
            provisioner,
        );
        // Canaries see this router's counts: through its usage reports when it has a remote
        // executor, else directly (the executor role in this process reads them).
        if feeder.is_none() {
            let _ = local_outcomes.set(router.outcomes());
        }
        // A replica fed by a remote executor sends it its request history too.
        let feeder = feeder.map(|f| {
            f.with_outcomes(router.outcomes())
                .with_stats(router.stats())
        });
        let public = bind(args.router_addr, "router").await?;
        let internal = bind(args.router_admin_addr, "router internal").await?;
        bound.push(("router", public.local_addr()?));
        bound.push(("router-internal", internal.local_addr()?));
        {
            let r = router.clone();
            let token = shutdown.clone();
            tasks.push((
                "router",
                tokio::spawn(async move {
                    if let Err(e) = r.serve(public, internal, token).await {
                        tracing::error!(error = %e, "the router failed");
                    }
                }),
            ));
        }
        if let Some(feeder) = &feeder {
            let f = feeder.clone();
            let token = shutdown.clone();
            tasks.push((
                "endpoint feeder",
                tokio::spawn(async move { f.run(token).await }),
            ));
            if let Some((client, namespace)) =
                pod_readiness_target(&args, kube_client.as_ref()).await?
            {
                let watcher = kappa_kube::PodReadinessWatcher::new(
                    client,
                    kappa_kube::PodReadinessConfig::new(namespace),
                    Arc::clone(feeder.gate()) as Arc<dyn kappa_core::Readiness>,
                );
                tasks.push((
                    "pod readiness watcher",
                    tokio::spawn(watcher.run(shutdown.clone())),
                ));
            }
        }
        {
            let r = router.clone();
            let ready = Arc::clone(&ready);
            let feeder = feeder.clone();
            tokio::spawn(async move {
                r.wait_ready().await;
                if let Some(feeder) = feeder {
                    while !feeder.wait_synced(Duration::from_secs(60)).await {
                        tracing::warn!("still waiting for the executor's endpoint list");
                    }
                }
                ready.store(true, Ordering::Release);
            });
        }
        admin.ready.push(Ready {
            role: Role::Router,
            flag: ready,
        });
        admin.router = Some(router.clone());
        router_handle = Some(router);
    }

    // Function invocations from the API (`kappa fn test`) and the trigger workers: in-process
    // when the router runs here, else through the router's internal listener.
    let invoker: Option<Arc<dyn Invoker>> = match (&router_handle, &args.router_admin_url) {
        (Some(router), _) => Some(Arc::new(LocalInvoker(router.clone()))),
        (None, Some(url)) => Some(Arc::new(
            HttpInvoker::new(url, &token).context("--router-admin-url")?,
        )),
        (None, None) => None,
    };

    // The trigger workers' metrics join the shared registry before the API role takes it.
    let trigger_metrics = if has(Role::Triggers) {
        Some(kappa_triggers::TriggerMetrics::new(
            registry.as_mut().context("the metrics registry is gone")?,
        ))
    } else {
        None
    };

    // ---- api --------------------------------------------------------------------------------
    if has(Role::Api) {
        let (Some(archives), Some(logs)) = (&archives, &logs) else {
            bail!("the api role needs the archive and log stores");
        };
        let metrics = Arc::new(ApiMetrics::with_registry(
            registry.take().context("the metrics registry is gone")?,
        ));
        let mut state = ApiState::new(Arc::clone(&store), Arc::clone(archives), Arc::clone(logs))
            .with_metrics(Arc::clone(&metrics))
            .with_token(token.clone())
            .with_metrics_need_token(args.metrics_need_token)
            .with_archive_gc(kappa_api::ArchiveGc::default());
        if let Some(invoker) = &invoker {
            state = state.with_invoker(Arc::clone(invoker));
        } else {
            tracing::warn!(
                "no router in this process and no --router-admin-url: `kappa fn test` will answer 503"
            );
        }
        if let Some(router) = &router_handle {
            state = state.with_route_sync(Arc::new(LocalInvoker(router.clone())));
        }
        // `fn pods` / `env pods`: the pool manager in this process, or the executor's API.
        match (&local_executor, &args.executor_url) {
            (Some((manager, _)), _) => state = state.with_instances(Arc::new(manager.clone())),
            (None, Some(url)) => {
                state = state.with_instances(Arc::new(
                    HttpInstances::new(url, &token).context("--executor-url")?,
                ));
            }
            (None, None) => tracing::warn!(
                "no executor in this process and no --executor-url: `kappa fn pods` will answer 503"
            ),
        }
        // `/v1/stats` and the dashboard: the executor's sum of the router replicas' reports
        // (in process or over its API), plus a router here that reports to no one.
        let mut sources: Vec<Arc<dyn kappa_core::StatsSource>> = Vec::new();
        match (&executor_stats, &args.executor_url) {
            (Some(stats), _) => sources.push(Arc::clone(stats) as Arc<dyn kappa_core::StatsSource>),
            (None, Some(url)) => sources.push(Arc::new(
                crate::stats::HttpStats::new(url, &token).context("--executor-url")?,
            )),
            (None, None) => {}
        }
        if let (Some(router), None) = (&router_handle, &args.executor_url) {
            sources.push(router.stats());
        }
        if sources.is_empty() {
            tracing::warn!(
                "no router or executor in this process and no --executor-url: `/v1/stats` will answer 503"
            );
        } else {
            state = state.with_stats(Arc::new(crate::stats::Combined(sources)));
        }
        if let Some(url) = &args.router_url {
            state = state.with_router_url(url.clone());
        }
        let listener = bind(args.api_addr, "API").await?;
        bound.push(("api", listener.local_addr()?));
        let token = shutdown.clone();
        tasks.push((
            "API server",
            tokio::spawn(async move {
                if let Err(e) = kappa_api::serve(listener, state, token).await {
                    tracing::error!(error = %e, "the API server failed");
                }
            }),
        ));
        admin.ready.push(Ready {
            role: Role::Api,
            flag: Arc::new(AtomicBool::new(true)),
        });
        admin.api_metrics = Some(metrics);
    }
    if let Some(registry) = registry.take()
        && (has(Role::Executor) || has(Role::Triggers))
    {
        admin.executor_metrics = Some(Arc::new(registry));
    }

    // ---- triggers ---------------------------------------------------------------------------
    if has(Role::Triggers) {
        let Some(invoker) = &invoker else {
            bail!(
                "role triggers invokes functions through the router: pass --router-admin-url (KAPPA_ROUTER_ADMIN_URL), or run role router in this process"
            );
        };
        let mut config = kappa_triggers::ManagerConfig::default();
        if let Some(url) = &args.nats_url {
            config.nats_url = url.clone();
        }
        if let Some(url) = &args.redis_url {
            config.redis_url = url.clone();
        }
        if let Some(url) = &args.kafka_url {
            config.kafka_url = url.clone();
        }
        let manager = kappa_triggers::TriggerManager::new(
            config,
            Arc::clone(&store),
            Arc::new(TriggerInvoker(Arc::clone(invoker))),
        );
        let manager = match trigger_metrics {
            Some(metrics) => manager.with_registered_metrics(metrics),
            None => manager,
        };
        let replica = replica_name(&args);
        let worker = Arc::new(kappa_triggers::AsyncWorker::new(
            kappa_triggers::AsyncConfig {
                node: replica.clone(),
                retention: args.async_retention,
                nats_url: args
                    .nats_url
                    .clone()
                    .unwrap_or_else(|| kappa_triggers::DEFAULT_NATS_URL.into()),
                redis_url: args
                    .redis_url
                    .clone()
                    .unwrap_or_else(|| kappa_triggers::DEFAULT_REDIS_URL.into()),
                kafka_url: args
                    .kafka_url
                    .clone()
                    .unwrap_or_else(|| kappa_triggers::DEFAULT_KAFKA_URL.into()),
                ..kappa_triggers::AsyncConfig::default()
            },
            Arc::clone(&store),
            Arc::new(TriggerInvoker(Arc::clone(invoker))),
            Arc::new(kappa_triggers::DefaultConnector),
        ));
        let leadership = elect(kube_client.as_ref(), "kappa-triggers", &replica, &shutdown);
        let token = shutdown.clone();
        tasks.push((
            "trigger workers",
            tokio::spawn(async move {
                // One replica consumes and fires schedules at a time: never twice per schedule.
                if let Some(work) = led(leadership, token, "trigger workers").await {
                    // The asynchronous invocation worker runs beside them, under the same lease.
                    let async_worker = tokio::spawn(worker.run(work.clone()));
                    manager.run(work).await;
                    let _ = async_worker.await;
                }
            }),
        ));
        admin.ready.push(Ready {
            role: Role::Triggers,
            flag: Arc::new(AtomicBool::new(true)),
        });
    }

    // ---- builder (cluster mode) ---- h-cbuild: port into the platform crate's builder role ----
    // Builds run in builder pods in the functions namespace; the source and the deployment
    // archive go through the API (this process shares no files with it). One replica builds at
    // a time (a Lease); it first deletes the builder pods a previous one left.
    if has(Role::Builder) {
        let client = kube_client
            .clone()
            .context("role builder needs a Kubernetes client (--store kubernetes)")?;
        let fetcher_image = args.fetcher_image.clone().context(
            "role builder needs --fetcher-image (KAPPA_FETCHER_IMAGE): the kappa image, which runs the builder pods' steps",
        )?;
        let api_url = args.internal_api_url.clone().context(
            "role builder needs --internal-api-url (KAPPA_INTERNAL_API_URL): the API server as the builder and its pods reach it",
        )?;
        let template = kappa_kube::pods::PodTemplate {
            namespace: args
                .function_namespace
                .clone()
                .unwrap_or_else(kappa_kube::current_namespace),
            fetcher_image,
            created_by: replica_name(&args),
            ..kappa_kube::pods::PodTemplate::default()
        };
        let max_archive_bytes = args.max_archive_mb << 20;
        let runner = kappa_kube::builds::PodBuildRunner::new(
            client,
            kappa_kube::builds::PodBuildConfig {
                max_archive_bytes,
                ..kappa_kube::builds::PodBuildConfig::new(
                    template,
                    api_url.clone(),
                    Some(token.clone()),
                )
            },
        );
        // The download cache, the build index and the (unused by pods) work directory.
        let state_dir = args.data_dir.join("builder");
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let archives = kappa_builder::ApiArchives::new(
            &api_url,
            Some(token.clone()),
            state_dir.join("archives"),
            max_archive_bytes,
            kappa_archive::ExtractLimits::default(),
            Duration::from_secs(300),
        )
        .context("the builder's API archive client")?;
        let builder = kappa_builder::Builder::new(
            kappa_builder::BuilderConfig::new(state_dir.join("builds")),
            Arc::clone(&store),
            Arc::new(archives),
            Arc::new(runner.clone()),
            RuntimeRegistry::new(state_dir.join("runtimes")),
        )
        .context("starting the package builder")?;
        let leadership = elect(
            kube_client.as_ref(),
            "kappa-builder",
            &replica_name(&args),
            &shutdown,
        );
        let token = shutdown.clone();
        tasks.push((
            "builder",
            tokio::spawn(async move {
                if let Some(work) = led(leadership, token, "builder").await {
                    match runner.collect_garbage().await {
                        Ok(n) => tracing::info!(
                            deleted = n,
                            "builder pods of a previous builder collected"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not list leftover builder pods")
                        }
                    }
                    builder.run(work).await;
                }
            }),
        ));
        admin.ready.push(Ready {
            role: Role::Builder,
            flag: Arc::new(AtomicBool::new(true)),
        });
    }
    // ---- end of the h-cbuild block ------------------------------------------------------------

    // ---- admin ------------------------------------------------------------------------------
    let admin_listener = bind(args.admin_addr, "admin").await?;
    bound.push(("admin", admin_listener.local_addr()?));
    {
        let app = admin_app(admin);
        let token = shutdown.clone();
        tasks.push((
            "admin",
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin_listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "the admin listener failed");
                }
            }),
        ));
    }

    for (what, addr) in &bound {
        // One line per listener on stdout, stable for scripts and tests to read.
        println!("listening {what} {addr}");
        tracing::info!(listener = what, %addr, "listening");
    }

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let stop = async {
        for (what, task) in tasks {
            if let Err(e) = task.await {
                tracing::warn!(task = what, error = %e, "a task ended abnormally");
            }
        }
    };
    if tokio::time::timeout(grace + Duration::from_secs(5), stop)
        .await
        .is_err()
    {
        tracing::warn!("shutdown took longer than the grace period");
    }
    Ok(())
}

/// Where the router's pod readiness watcher runs, if it does. `--pod-readiness true` needs a
/// Kubernetes client (the function namespace defaults to this pod's); unset, it runs when
/// `--function-namespace` is set and a client can be built (in a cluster); `false` never.
async fn pod_readiness_target(
    args: &ServerArgs,
    client: Option<&kappa_kube::Client>,
) -> anyhow::Result<Option<(kappa_kube::Client, String)>> {
    match args.pod_readiness {
        Some(false) => Ok(None),
        Some(true) => {
            let client = match client {
                Some(client) => client.clone(),
                None => kappa_kube::default_client().await.context(
                    "--pod-readiness needs a Kubernetes client (in-cluster service account, or KUBECONFIG)",
                )?,
            };
            let namespace = args
                .function_namespace
                .clone()
                .unwrap_or_else(kappa_kube::current_namespace);
            Ok(Some((client, namespace)))
        }
        None => {
            let Some(namespace) = args.function_namespace.clone() else {
                tracing::debug!("pod readiness off: no --function-namespace");
                return Ok(None);
            };
            let client = match client {
                Some(client) => client.clone(),
                None => match kappa_kube::default_client().await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::info!(%error, "pod readiness off: no Kubernetes client (pass --pod-readiness true to require it)");
                        return Ok(None);
                    }
                },
            };
            Ok(Some((client, namespace)))
        }
    }
}

fn load_token(args: &ServerArgs) -> anyhow::Result<String> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!(
            "no API token: set --token (KAPPA_TOKEN) or --token-file (KAPPA_TOKEN_FILE); the roles authenticate each other with it"
        ),
    };
    if token.len() < 16 {
        bail!(
            "the API token is too short ({} characters): use at least 16",
            token.len()
        );
    }
    Ok(token)
}

fn open_store(
    spec: Option<&str>,
    data_dir: &Path,
    kube: Option<&kappa_kube::Client>,
) -> anyhow::Result<Arc<dyn Store>> {
    let default = format!("embedded:{}", data_dir.join("kappa.redb").display());
    let spec = spec.unwrap_or(&default);
    if spec == "kubernetes" {
        let client = kube.context("--store kubernetes needs a Kubernetes client")?;
        return Ok(Arc::new(kappa_kube::KubeStore::new(client.clone())));
    }
    let Some(path) = spec.strip_prefix("embedded:") else {
        bail!("--store {spec:?} is not valid: expected embedded:<path> or kubernetes");
    };
    if path.is_empty() {
        bail!("--store embedded: needs a file path, e.g. embedded:/var/lib/kappa/kappa.redb");
    }
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let store = RedbStore::open(&path).with_context(|| {
        format!(
            "opening the embedded store {} (only one process may open it)",
            path.display()
        )
    })?;
    Ok(Arc::new(store))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
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

fn admin_app(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(admin))
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let waiting: Vec<&str> = admin
        .ready
        .iter()
        .filter(|r| !r.flag.load(Ordering::Acquire))
        .map(|r| r.role.name())
        .collect();
    if waiting.is_empty() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(check) = &admin.metrics_token {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(refused) = check.verify(authorization) {
            let body = kappa_types::ErrorBody::new("unauthorized", refused.to_string()).to_bytes();
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
                ],
                body,
            )
                .into_response();
        }
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = &admin.api_metrics {
        parts.push(m.encode());
    }
    if let Some(registry) = &admin.executor_metrics {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, registry).is_ok() {
            parts.push(text);
        }
    }
    if let Some(router) = &admin.router {
        parts.push(router.metrics_text());
    }
    // Each part is a complete exposition ending in `# EOF`; the combination ends once.
    let mut body = String::new();
    for part in parts {
        for line in part.lines().filter(|l| *l != "# EOF") {
            body.push_str(line);
            body.push('\n');
        }
    }
    body.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

/// This replica's name: `--replica`, else `$HOSTNAME` (the pod name in a cluster).
fn replica_name(args: &ServerArgs) -> String {
    args.replica
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("kappa-{}", uuid::Uuid::new_v4().simple()))
}

/// Starts leader election on the Lease `name` in this pod's namespace when running on
/// Kubernetes; `None` (no election: a single process) otherwise.
fn elect(
    kube: Option<&kappa_kube::Client>,
    name: &str,
    holder: &str,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::watch::Receiver<bool>> {
    let client = kube?.clone();
    let config = kappa_kube::LeaseConfig::new(name, &kappa_kube::current_namespace(), holder);
    tracing::info!(lease = name, holder, "waiting to lead");
    Some(kappa_kube::elect(
        kappa_kube::LeaseLock::new(client, config),
        shutdown.clone(),
    ))
}

/// Waits until this replica leads (at once without election) and returns the token the
/// leader-only work runs under; losing the lease later cancels the whole process (`shutdown`),
/// so Kubernetes restarts it and it waits for the lease again. `None` on shutdown first.
async fn led(
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown: CancellationToken,
    what: &'static str,
) -> Option<CancellationToken> {
    let Some(mut leadership) = leadership else {
        return Some(shutdown);
    };
    tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = leadership.wait_for(|leads| *leads) => { r.ok()?; }
    }
    tracing::info!(work = what, "leading");
    let work = shutdown.child_token();
    let watched = work.clone();
    tokio::spawn(async move {
        if leadership.wait_for(|leads| !*leads).await.is_ok() && !watched.is_cancelled() {
            tracing::error!(
                work = what,
                "lost the lease; stopping so another replica takes over"
            );
            shutdown.cancel();
        }
    });
    Some(work)
}

/// Lets the trigger workers invoke through whatever invoker the API uses.
struct TriggerInvoker(Arc<dyn Invoker>);

#[async_trait::async_trait]
impl kappa_triggers::Invoke for TriggerInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

/// Invokes through the router in this process.
struct LocalInvoker(Router);

#[async_trait::async_trait]
impl Invoker for LocalInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

#[async_trait::async_trait]
impl kappa_api::RouteSync for LocalInvoker {
    async fn wait_applied(&self, version: u64) {
        if !self.0.wait_applied(version, Duration::from_secs(2)).await {
            tracing::warn!(version, "the router took more than 2 s to apply a write");
        }
    }
}

/// An authenticated `GET` of one path of the executor's API: the one client of the executor
/// that the API role's instance lists and request history share.
pub(crate) struct ExecutorGet {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl ExecutorGet {
    pub(crate) fn new(base: &str, token: &str, path: &str) -> anyhow::Result<Self> {
        let parsed =
            reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("{base:?} must be an http:// or https:// URL");
        }
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
                .context("creating the HTTP client")?,
            url: format!("{}{path}", base.trim_end_matches('/')),
            token: token.to_string(),
        })
    }

    /// The answer's JSON body; `unreadable` names what a body that does not parse was.
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        unreadable: &str,
    ) -> Result<T, String> {
        let response = self
            .client
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("the executor at {} did not answer: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "the executor at {} answered {status}: {body}",
                self.url
            ));
        }
        response
            .json::<T>()
            .await
            .map_err(|e| format!("the executor at {} sent {unreadable}: {e}", self.url))
    }
}

/// Lists the pool manager's instances through the executor's API (`GET /v1/instances`).
struct HttpInstances(ExecutorGet);

impl HttpInstances {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        ExecutorGet::new(base, token, kappa_core::executor_api::INSTANCES_PATH).map(Self)
    }
}

#[async_trait::async_trait]
impl kappa_core::InstanceLister for HttpInstances {
    async fn instances(&self) -> Result<Vec<kappa_core::InstanceInfo>, String> {
        self.0
            .get::<kappa_core::executor_api::InstanceList>("an unreadable list")
            .await
            .map(|l| l.items)
    }
}

/// Invokes through a router's internal listener
/// (`/internal/v1/functions/<ns>/<name>/invoke/<path>`), streaming both bodies.
struct HttpInvoker {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl HttpInvoker {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let parsed =
            reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("{base:?} must be an http:// or https:// URL");
        }
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .context("creating the HTTP client")?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Invoker for HttpInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let rest = if path == "/" { "" } else { path };
        let mut url = format!(
            "{}/internal/v1/functions/{}/{}/invoke{rest}",
            self.base, function.namespace, function.name
        );
        if let Some(q) = parts.uri.query() {
            url.push('?');
            url.push_str(q);
        }
        let mut headers = parts.headers.clone();
        headers.remove(header::HOST);
        headers.remove(header::AUTHORIZATION);
        let result = self
            .client
            .request(parts.method.clone(), &url)
            .headers(headers)
            .bearer_auth(&self.token)
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await;
        match result {
            Ok(response) => {
                let mut builder = http::Response::builder().status(response.status());
                if let Some(h) = builder.headers_mut() {
                    h.extend(
                        response
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                builder
                    .body(axum::body::Body::from_stream(response.bytes_stream()))
                    .unwrap_or_else(|_| unavailable("the router's answer was not valid"))
            }
            Err(e) => unavailable(&format!("the router at {} did not answer: {e}", self.base)),
        }
    }
}

fn unavailable(message: &str) -> http::Response<axum::body::Body> {
    let body = kappa_types::ErrorBody::new("unavailable", message).to_bytes();
    let mut response = http::Response::new(axum::body::Body::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What the canary controller measures in the executor role: the sum of the router replicas'
/// reports, plus the router in this process (set once it exists).
struct CanarySource {
    executor: ExecutorApi,
    local: Arc<std::sync::OnceLock<Arc<kappa_core::Outcomes>>>,
}

impl kappa_core::OutcomeSource for CanarySource {
    fn outcome(&self, function: &kappa_core::FunctionId) -> (u64, u64) {
        let (r, f) = self.executor.outcome(function);
        let (lr, lf) = self.local.get().map_or((0, 0), |o| {
            kappa_core::OutcomeSource::outcome(o.as_ref(), function)
        });
        (r + lr, f + lf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_args(flags: &[&str]) -> ServerArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServerArgs,
        }
        let argv = ["kappa", "--role", "router"].iter().chain(flags);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    /// The API role's lister of instances against a real executor API over HTTP.
    #[tokio::test]
    async fn instances_are_listed_over_the_executors_api() {
        struct Two;
        #[async_trait::async_trait]
        impl kappa_core::InstanceLister for Two {
            async fn instances(&self) -> Result<Vec<kappa_core::InstanceInfo>, String> {
                Ok(vec![kappa_core::InstanceInfo {
                    id: "python-1".into(),
                    environment: Some(FunctionId::new("default", "python")),
                    function: None,
                    state: kappa_core::InstanceState::Warm,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: "sandbox:8888:/x".into(),
                }])
            }
        }
        struct Never;
        #[async_trait::async_trait]
        impl Provisioner for Never {
            async fn provision(
                &self,
                _: &FunctionId,
                _: i64,
            ) -> Result<kappa_core::Provision, kappa_core::ProvisionError> {
                Ok(kappa_core::Provision::AtCapacity)
            }
        }
        let api = ExecutorApi::new(
            Arc::new(Never),
            Arc::new(EndpointIndex::new()),
            Some("secret".into()),
        )
        .with_instances(Arc::new(Two));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, api.app()).await });

        let lister = HttpInstances::new(&url, "secret").unwrap();
        let items = kappa_core::InstanceLister::instances(&lister)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, "python-1");
        assert_eq!(items[0].state, kappa_core::InstanceState::Warm);

        let wrong = HttpInstances::new(&url, "not-the-token").unwrap();
        let err = kappa_core::InstanceLister::instances(&wrong)
            .await
            .unwrap_err();
        assert!(err.contains("401"), "{err}");
        assert!(HttpInstances::new("ftp://x", "t").is_err());
    }

    #[tokio::test]
    async fn pod_readiness_is_off_when_refused_or_outside_a_cluster() {
        let off = server_args(&["--pod-readiness=no", "--function-namespace", "fns"]);
        assert_eq!(off.pod_readiness, Some(false));
        assert!(pod_readiness_target(&off, None).await.unwrap().is_none());
        // Unset and no function namespace (local mode): off, without looking for a client.
        let local = server_args(&[]);
        assert_eq!(local.pod_readiness, None);
        assert!(pod_readiness_target(&local, None).await.unwrap().is_none());
        assert_eq!(
            server_args(&["--pod-readiness", "true"]).pod_readiness,
            Some(true)
        );
    }

    #[test]
    fn store_specs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_store(Some("kubernetes"), dir.path(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("Kubernetes client"), "{e}");
        let e = open_store(Some("etcd://x"), dir.path(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not valid"), "{e}");
        let e = open_store(Some("embedded:"), dir.path(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("file path"), "{e}");
        let path = dir.path().join("sub/kappa.redb");
        open_store(
            Some(&format!("embedded:{}", path.display())),
            dir.path(),
            None,
        )
        .unwrap();
        assert!(path.exists());
    }
}
