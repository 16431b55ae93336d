//! [`Platform::build`]: the one place the platform's parts are wired together, for any set of
//! roles. `kappa up` calls it with every role and the embedded store; `kappa server --role`
//! with the roles it was given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kappa_api::{ApiMetrics, ApiState, Invoker};
use kappa_archive::ArchiveStore;
use kappa_core::{EndpointIndex, Provisioner};
use kappa_executor::{ExecutorApi, ExecutorConfig, PoolManager};
use kappa_local::{LocalBackend, LocalConfig, RuntimeRegistry};
use kappa_logs::{LogConfig, LogStore};
use kappa_router::{
    EndpointFeeder, ReadinessGate, RemoteConfig, RemoteProvisioner, Router, RouterConfig,
};
use kappa_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Ready, admin_app};
use crate::cluster::{elect, led, open_store, pod_readiness_target};
use crate::config::{BackendKind, BuildRunnerKind, Config, Role, RouterUrl, StoreConfig};
use crate::error::{Ctx as _, PlatformError};
use crate::executor::{CanarySource, Combined, HttpInstances, HttpStats};
use crate::invoke::{HttpInvoker, LocalInvoker, TriggerInvoker};
use crate::local::LocalRuntimes;

/// How the local backend isolates instances (reported by `kappa up` and `kappa server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    /// In the built-in sandbox.
    pub sandboxed: bool,
    /// Sandboxed instances reach the network (slirp4netns).
    pub egress: bool,
}

/// A running platform: the roles' tasks, their bound listeners and the handles a preset needs
/// (the store and archives to deploy an example, the router to wait for it).
pub struct Platform {
    shutdown: CancellationToken,
    grace: Duration,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    bound: Vec<(&'static str, SocketAddr)>,
    store: Arc<dyn Store>,
    archives: Option<Arc<ArchiveStore>>,
    router: Option<Router>,
    isolation: Option<Isolation>,
}

impl Platform {
    /// Opens the stores, starts `roles` (each at most once, whatever the order given) and binds
    /// their listeners. Fails, naming the setting, when a role lacks what it needs (a router
    /// without an executor, triggers without a router, ...).
    pub async fn build(config: Config, roles: &[Role]) -> Result<Platform, PlatformError> {
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let has = |r: Role| roles.contains(&r);
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        tracing::info!(roles = ?names, "starting the platform");
        let config = Arc::new(config);
        let token = config.token.clone();

        let needs_files = has(Role::Api) || has(Role::Executor) || has(Role::Builder);
        if needs_files {
            std::fs::create_dir_all(&config.data_dir).with_ctx(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
        }
        let kube_client = if config.store == StoreConfig::Kubernetes
            || config.backend == BackendKind::Kubernetes
        {
            Some(kappa_kube::default_client().await.ctx(
                "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
            )?)
        } else {
            None
        };
        let store = open_store(&config.store, kube_client.as_ref())?;
        let archives = if needs_files {
            Some(Arc::new(
                ArchiveStore::open(config.data_dir.join("archives"), config.max_archive_bytes)
                    .ctx("opening the archive store")?,
            ))
        } else {
            None
        };
        let logs = if needs_files {
            Some(Arc::new(
                LogStore::open(config.data_dir.join("logs"), LogConfig::default())
                    .ctx("opening the log store")?,
            ))
        } else {
            None
        };

        let shutdown = CancellationToken::new();
        let grace = config.shutdown_grace;
        let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        let mut admin = Admin {
            metrics_token: config
                .metrics_need_token
                .then(|| kappa_core::TokenCheck::new(&token)),
            ..Admin::default()
        };
        let mut registry = Some(prometheus_client::registry::Registry::default());
        let mut bound: Vec<(&'static str, SocketAddr)> = Vec::new();
        let mut isolation = None;

        // ---- executor -----------------------------------------------------------------------
        let mut local_executor: Option<(PoolManager, Arc<EndpointIndex>)> = None;
        // The routers' request history the executor in this process collects (`/v1/stats`).
        let mut executor_stats: Option<Arc<kappa_executor::stats::ReplicaStats>> = None;
        // The router in this process, if any, for the canary controller (set when it is built).
        let local_outcomes: Arc<std::sync::OnceLock<Arc<kappa_core::Outcomes>>> =
            Arc::new(std::sync::OnceLock::new());
        if has(Role::Executor) {
            let (Some(archives), Some(logs)) = (&archives, &logs) else {
                return Err(PlatformError::config(
                    "the executor role needs the archive and log stores",
                ));
            };
            // `newdeploy` functions as a Deployment per function (Kubernetes only).
            let mut deployments: Option<Arc<dyn kappa_core::Deployments>> = None;
            let backend: Arc<dyn kappa_core::Backend> = match config.backend {
                BackendKind::Kubernetes => {
                    let (client, template, api_url) =
                        pod_template(&config, kube_client.as_ref(), "--backend kubernetes")?;
                    let pod_config = kappa_kube::PodBackendConfig {
                        template,
                        api_url,
                        api_token: Some(token.clone()),
                        fetcher_key: token.clone(),
                        ..kappa_kube::PodBackendConfig::default()
                    };
                    let function_deployments = Arc::new(kappa_kube::KubeDeployments::new(
                        client.clone(),
                        kappa_kube::DeploymentsConfig::from(&pod_config),
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
                        pod_config,
                        Some(Arc::clone(&store)),
                    ));
                    let watcher = Arc::clone(&backend);
                    let token = shutdown.clone();
                    tasks.push((
                        "pod watcher",
                        tokio::spawn(async move { watcher.watch_pods(token).await }),
                    ));
                    backend
                }
                BackendKind::Local => {
                    check_runtimes(&config)?;
                    let backend = LocalBackend::new(
                        LocalConfig {
                            data_dir: config.data_dir.join("local"),
                            runtimes: RuntimeRegistry::new(config.runtimes_dir.clone()),
                            sandbox: config.sandbox,
                            helper: Some(helper()?),
                            egress: config.egress,
                            cgroups: config.cgroups,
                            start_timeout: Duration::from_secs(10),
                            zygote: config.zygote,
                            spares: config.spare_sandboxes,
                        },
                        Arc::clone(archives),
                        Arc::clone(logs),
                    )
                    .await
                    .ctx("starting the local instance backend")?;
                    isolation = Some(Isolation {
                        sandboxed: backend.sandboxed(),
                        egress: backend.egress(),
                    });
                    Arc::new(backend)
                }
            };
            let index = Arc::new(EndpointIndex::new());
            let manager = PoolManager::new(
                ExecutorConfig {
                    max_instances: config.max_instances,
                    pool_memory_budget: config.pool_memory_budget,
                    ..ExecutorConfig::default()
                },
                Arc::clone(&store),
                backend,
                Arc::clone(&index),
                Arc::clone(archives),
                registry.as_mut().ok_or_else(registry_gone)?,
            );
            if let Some(deployments) = deployments {
                manager.set_deployments(deployments);
            }
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
                let finalizer = match (&config.store, &kube_client) {
                    (StoreConfig::Kubernetes, Some(client)) => {
                        Some(kappa_kube::FunctionFinalizer::new(
                            client.clone(),
                            kappa_kube::FinalizerConfig::new(
                                config
                                    .function_namespace
                                    .clone()
                                    .unwrap_or_else(kappa_kube::current_namespace),
                            ),
                        ))
                    }
                    _ => None,
                };
                let leadership = elect(
                    kube_client.as_ref(),
                    "kappa-executor",
                    &config.replica,
                    &shutdown,
                );
                // Canaries measure what every router replica reports to this executor, plus
                // the router in this process when there is one (it reports nothing).
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
                        // One pool manager acts at a time: two would fight over the same pods.
                        // The finalizer controller deletes pods too, so it runs under the same
                        // lease, as does the canary controller (one writer of the routes it
                        // shifts).
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
                                    tokio::join!(
                                        manager.run(work.clone(), grace),
                                        canaries.run(work)
                                    );
                                }
                            }
                        }
                    }),
                ));
            }
            // The executor API, for routers in other processes.
            if let Some(addr) = config.listen.executor {
                let listener = bind(addr, "executor API").await?;
                bound.push(("executor", local_addr(&listener)?));
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

        // ---- router -------------------------------------------------------------------------
        let mut router_handle: Option<Router> = None;
        if has(Role::Router) {
            let ready = Arc::new(AtomicBool::new(false));
            let (index, provisioner, feeder): (Arc<EndpointIndex>, Arc<dyn Provisioner>, _) = match (
                &config.executor_url,
                &local_executor,
            ) {
                (Some(url), _) => {
                    let index = Arc::new(EndpointIndex::new());
                    let mut remote = RemoteConfig::new(url.clone(), config.replica.clone());
                    remote.token = Some(token.clone());
                    let provisioner = RemoteProvisioner::new(remote.clone(), Arc::clone(&index))
                        .ctx("--executor-url")?;
                    // The gate writes the index for the feeder and, with pod readiness,
                    // for the pod watcher started below.
                    let gate = Arc::new(ReadinessGate::new(Arc::clone(&index)));
                    let feeder = EndpointFeeder::with_gate(remote, gate).ctx("--executor-url")?;
                    (index, Arc::new(provisioner), Some(feeder))
                }
                (None, Some((manager, index))) => {
                    (Arc::clone(index), Arc::new(manager.clone()), None)
                }
                (None, None) => {
                    return Err(PlatformError::config(
                        "role router needs the executor: pass --executor-url (KAPPA_EXECUTOR_URL), or run role executor in this process",
                    ));
                }
            };
            let router = Router::new(
                RouterConfig {
                    queue_limit: config.queue_limit,
                    max_body_bytes: config.max_body_bytes,
                    internal_token: Some(token.clone()),
                    metrics_need_token: config.metrics_need_token,
                    upgrade_idle_timeout: config.upgrade_idle_timeout,
                    shutdown_grace: grace,
                    threads: config.router_threads,
                    ..RouterConfig::default()
                },
                Arc::clone(&store),
                index,
                provisioner,
            );
            // Canaries see this router's counts: through its usage reports when it has a
            // remote executor, else directly (the executor role in this process reads them).
            if feeder.is_none() {
                let _ = local_outcomes.set(router.outcomes());
            }
            // A replica fed by a remote executor sends it its request history too.
            let feeder = feeder.map(|f| {
                f.with_outcomes(router.outcomes())
                    .with_stats(router.stats())
            });
            let public = bind(config.listen.router, "router").await?;
            let internal = bind(config.listen.router_admin, "router internal").await?;
            bound.push(("router", local_addr(&public)?));
            bound.push(("router-internal", local_addr(&internal)?));
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
                    pod_readiness_target(&config, kube_client.as_ref()).await?
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
                    ready.store(true, std::sync::atomic::Ordering::Release);
                });
            }
            admin.ready.push(Ready {
                role: Role::Router,
                flag: ready,
            });
            admin.router = Some(router.clone());
            router_handle = Some(router);
        }

        // Function invocations from the API (`kappa fn test`) and the trigger workers:
        // in-process when the router runs here, else through the router's internal listener.
        let invoker: Option<Arc<dyn Invoker>> = match (&router_handle, &config.router_admin_url) {
            (Some(router), _) => Some(Arc::new(LocalInvoker(router.clone()))),
            (None, Some(url)) => Some(Arc::new(
                HttpInvoker::new(url, &token).ctx("--router-admin-url")?,
            )),
            (None, None) => None,
        };

        // The trigger workers' metrics join the shared registry before the API role takes it.
        let trigger_metrics = if has(Role::Triggers) {
            Some(kappa_triggers::TriggerMetrics::new(
                registry.as_mut().ok_or_else(registry_gone)?,
            ))
        } else {
            None
        };

        // ---- api ----------------------------------------------------------------------------
        if has(Role::Api) {
            let (Some(archives), Some(logs)) = (&archives, &logs) else {
                return Err(PlatformError::config(
                    "the api role needs the archive and log stores",
                ));
            };
            let metrics = Arc::new(ApiMetrics::with_registry(
                registry.take().ok_or_else(registry_gone)?,
            ));
            let mut state =
                ApiState::new(Arc::clone(&store), Arc::clone(archives), Arc::clone(logs))
                    .with_metrics(Arc::clone(&metrics))
                    .with_token(token.clone())
                    .with_metrics_need_token(config.metrics_need_token)
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
            match (&local_executor, &config.executor_url) {
                (Some((manager, _)), _) => {
                    state = state.with_instances(Arc::new(manager.clone()));
                }
                (None, Some(url)) => {
                    state = state.with_instances(Arc::new(
                        HttpInstances::new(url, &token).ctx("--executor-url")?,
                    ));
                }
                (None, None) => tracing::warn!(
                    "no executor in this process and no --executor-url: `kappa fn pods` will answer 503"
                ),
            }
            // `/v1/stats` and the dashboard: the executor's sum of the router replicas' reports
            // (in process or over its API), plus a router here that reports to no one.
            let mut sources: Vec<Arc<dyn kappa_core::StatsSource>> = Vec::new();
            match (&executor_stats, &config.executor_url) {
                (Some(stats), _) => {
                    sources.push(Arc::clone(stats) as Arc<dyn kappa_core::StatsSource>);
                }
                (None, Some(url)) => {
                    sources.push(Arc::new(HttpStats::new(url, &token).ctx("--executor-url")?))
                }
                (None, None) => {}
            }
            if let (Some(router), None) = (&router_handle, &config.executor_url) {
                sources.push(router.stats());
            }
            if sources.is_empty() {
                tracing::warn!(
                    "no router or executor in this process and no --executor-url: `/v1/stats` will answer 503"
                );
            } else {
                state = state.with_stats(Arc::new(Combined(sources)));
            }
            match &config.router_url {
                RouterUrl::Unknown => {}
                RouterUrl::Given(url) => state = state.with_router_url(url.clone()),
                RouterUrl::Listener => {
                    if let Some((_, addr)) = bound.iter().find(|(what, _)| *what == "router") {
                        state = state.with_router_url(format!("http://{addr}"));
                    }
                }
            }
            if config.check_local_runtimes {
                state = state.with_runtime_check(Arc::new(LocalRuntimes(RuntimeRegistry::new(
                    config.runtimes_dir.clone(),
                ))));
            }
            let listener = bind(config.listen.api, "API").await?;
            bound.push(("api", local_addr(&listener)?));
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

        // ---- triggers -----------------------------------------------------------------------
        if has(Role::Triggers) {
            let Some(invoker) = &invoker else {
                return Err(PlatformError::config(
                    "role triggers invokes functions through the router: pass --router-admin-url (KAPPA_ROUTER_ADMIN_URL), or run role router in this process",
                ));
            };
            let manager = kappa_triggers::TriggerManager::new(
                kappa_triggers::ManagerConfig {
                    nats_url: config.nats_url.clone(),
                    redis_url: config.redis_url.clone(),
                    kafka_url: config.kafka_url.clone(),
                    ..kappa_triggers::ManagerConfig::default()
                },
                Arc::clone(&store),
                Arc::new(TriggerInvoker(Arc::clone(invoker))),
            );
            let manager = match trigger_metrics {
                Some(metrics) => manager.with_registered_metrics(metrics),
                None => manager,
            };
            let worker = Arc::new(kappa_triggers::AsyncWorker::new(
                kappa_triggers::AsyncConfig {
                    node: config.async_node.clone(),
                    retention: config.async_retention,
                    nats_url: config.nats_url.clone(),
                    redis_url: config.redis_url.clone(),
                    kafka_url: config.kafka_url.clone(),
                    metrics: manager.metrics(),
                    ..kappa_triggers::AsyncConfig::default()
                },
                Arc::clone(&store),
                Arc::new(TriggerInvoker(Arc::clone(invoker))),
                Arc::new(kappa_triggers::DefaultConnector),
            ));
            let leadership = elect(
                kube_client.as_ref(),
                "kappa-triggers",
                &config.replica,
                &shutdown,
            );
            let local_router = router_handle.clone();
            let token = shutdown.clone();
            tasks.push((
                "trigger workers",
                tokio::spawn(async move {
                    // A router in this process serves first, so the first invocations find it
                    // ready.
                    if let Some(router) = local_router {
                        tokio::select! {
                            _ = router.wait_ready() => {}
                            _ = token.cancelled() => return,
                        }
                    }
                    // One replica consumes and fires schedules at a time: never twice per
                    // schedule.
                    if let Some(work) = led(leadership, token, "trigger workers").await {
                        // The asynchronous invocation worker runs beside them, under the same
                        // lease.
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

        // ---- builder ------------------------------------------------------------------------
        if has(Role::Builder) {
            let builder_config = kappa_builder::BuilderConfig {
                timeout: config.build_timeout.max(Duration::from_secs(1)),
                parallelism: config.build_parallelism.max(1),
                ..kappa_builder::BuilderConfig::new(config.data_dir.join("builds"))
            };
            let runtimes = RuntimeRegistry::new(config.runtimes_dir.clone());
            // Builder pods (Kubernetes) reach archives through the API and leave pods behind
            // when their builder dies; a local runner uses this process's archive store.
            let mut pods: Option<kappa_kube::builds::PodBuildRunner> = None;
            let builder = match &config.build_runner {
                BuildRunnerKind::Pods => {
                    let (runner, archives) = pod_build_runner(&config, kube_client.as_ref())?;
                    pods = Some(runner.clone());
                    kappa_builder::Builder::new(
                        builder_config,
                        Arc::clone(&store),
                        Arc::new(archives),
                        Arc::new(runner),
                        runtimes,
                    )
                }
                BuildRunnerKind::LocalSandbox | BuildRunnerKind::Custom(_) => {
                    let Some(archives) = &archives else {
                        return Err(PlatformError::config(
                            "the builder role needs the archive store",
                        ));
                    };
                    kappa_builder::Builder::new(
                        builder_config,
                        Arc::clone(&store),
                        Arc::clone(archives),
                        build_runner(&config).await?,
                        runtimes,
                    )
                }
            }
            .ctx("starting the package builder")?;
            // One replica builds at a time: two would build the same package twice.
            let leadership = elect(
                kube_client.as_ref(),
                "kappa-builder",
                &config.replica,
                &shutdown,
            );
            let token = shutdown.clone();
            tasks.push((
                "builder",
                tokio::spawn(async move {
                    if let Some(work) = led(leadership, token, "builder").await {
                        if let Some(pods) = pods {
                            match pods.collect_garbage().await {
                                Ok(n) => tracing::info!(
                                    deleted = n,
                                    "builder pods of a previous builder collected"
                                ),
                                Err(e) => tracing::warn!(
                                    error = %e,
                                    "could not list leftover builder pods"
                                ),
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

        // ---- admin --------------------------------------------------------------------------
        if let Some(addr) = config.listen.admin {
            let admin_listener = bind(addr, "admin").await?;
            bound.push(("admin", local_addr(&admin_listener)?));
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

        Ok(Platform {
            shutdown,
            grace,
            tasks,
            bound,
            store,
            archives,
            router: router_handle,
            isolation,
        })
    }

    /// The bound listeners, in the order they were bound: `executor`, `router`,
    /// `router-internal`, `api`, `admin` (those the roles have).
    pub fn listeners(&self) -> &[(&'static str, SocketAddr)] {
        &self.bound
    }

    /// The address of the listener `what`, if bound.
    pub fn address(&self, what: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(name, _)| *name == what)
            .map(|(_, addr)| *addr)
    }

    /// The store every role of this process shares.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The archive store (roles api, executor, builder).
    pub fn archives(&self) -> Option<&Arc<ArchiveStore>> {
        self.archives.as_ref()
    }

    /// The router of this process (role router).
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// How the local backend isolates instances (role executor with the local backend).
    pub fn isolation(&self) -> Option<Isolation> {
        self.isolation
    }

    /// Stops every role: listeners stop accepting, in-flight requests drain and instances
    /// stop within the shutdown grace (plus a little for the tasks to end).
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shutdown.cancel();
        let stop = async {
            for (what, task) in self.tasks {
                if let Err(e) = task.await {
                    tracing::warn!(task = what, error = %e, "a task ended abnormally");
                }
            }
        };
        if tokio::time::timeout(self.grace + Duration::from_secs(5), stop)
            .await
            .is_err()
        {
            tracing::warn!("shutdown took longer than the grace period");
        }
    }
}

/// What runs the builder role's builds: the one place a kind of runner is chosen.
async fn build_runner(
    config: &Config,
) -> Result<Arc<dyn kappa_builder::BuildRunner>, PlatformError> {
    match &config.build_runner {
        // Source packages are built in the same sandbox and limits as instances.
        BuildRunnerKind::LocalSandbox => {
            check_runtimes(config)?;
            let helper = helper()?;
            let sandbox = kappa_local::BuildSandbox::new(
                config.sandbox,
                Some(&helper),
                config.egress,
                config.cgroups,
                &config.data_dir.join("builds-sandbox"),
            )
            .await
            .ctx("starting the build sandbox")?;
            Ok(Arc::new(sandbox))
        }
        BuildRunnerKind::Custom(runner) => Ok(Arc::clone(runner)),
        BuildRunnerKind::Pods => Err(PlatformError::config(
            "builder pods are started with the API archive client (pod_build_runner)",
        )),
    }
}

/// What function pods and builder pods share: the client, the pod template (functions
/// namespace, the kappa image that runs their fetch and upload steps, this replica as creator)
/// and the API's URL as pods reach it. `what` names the setting that needs them in errors.
fn pod_template(
    config: &Config,
    kube: Option<&kappa_kube::Client>,
    what: &str,
) -> Result<(kappa_kube::Client, kappa_kube::pods::PodTemplate, String), PlatformError> {
    let client = kube
        .cloned()
        .ok_or_else(|| PlatformError::config(format!("{what} needs a Kubernetes client")))?;
    let fetcher_image = config.fetcher_image.clone().ok_or_else(|| PlatformError::config(format!(
        "{what} needs --fetcher-image (KAPPA_FETCHER_IMAGE): the kappa image, which runs the pods' fetch and upload steps",
    )))?;
    let api_url = config.internal_api_url.clone().ok_or_else(|| PlatformError::config(format!(
        "{what} needs --internal-api-url (KAPPA_INTERNAL_API_URL): the API server as pods reach it",
    )))?;
    let template = kappa_kube::pods::PodTemplate {
        namespace: config
            .function_namespace
            .clone()
            .unwrap_or_else(kappa_kube::current_namespace),
        fetcher_image,
        created_by: config.replica.clone(),
        ..kappa_kube::pods::PodTemplate::default()
    };
    Ok((client, template, api_url))
}

/// Kubernetes builds: a builder pod per build in the functions namespace, the source and the
/// deployment archive through the API (the builder shares no files with it).
fn pod_build_runner(
    config: &Config,
    kube: Option<&kappa_kube::Client>,
) -> Result<
    (
        kappa_kube::builds::PodBuildRunner,
        kappa_builder::ApiArchives,
    ),
    PlatformError,
> {
    let (client, template, api_url) = pod_template(config, kube, "role builder on Kubernetes")?;
    let runner = kappa_kube::builds::PodBuildRunner::new(
        client,
        kappa_kube::builds::PodBuildConfig {
            max_archive_bytes: config.max_archive_bytes,
            ..kappa_kube::builds::PodBuildConfig::new(
                template,
                api_url.clone(),
                Some(config.token.clone()),
            )
        },
    );
    // The download cache and the build index live beside the (unused by pods) work directory.
    let state_dir = config.data_dir.join("builder");
    std::fs::create_dir_all(&state_dir).with_ctx(|| format!("creating {}", state_dir.display()))?;
    let archives = kappa_builder::ApiArchives::new(
        &api_url,
        Some(config.token.clone()),
        state_dir.join("archives"),
        config.max_archive_bytes,
        kappa_archive::ExtractLimits::default(),
        Duration::from_secs(300),
    )
    .ctx("the builder's API archive client")?;
    Ok((runner, archives))
}

/// The local backend and the local builder start runtimes from `runtimes_dir`.
fn check_runtimes(config: &Config) -> Result<(), PlatformError> {
    if !config
        .runtimes_dir
        .join("python")
        .join("server.py")
        .is_file()
    {
        return Err(PlatformError::config(format!(
            "no runtimes in {} (expected python/server.py): pass --runtimes-dir (KAPPA_RUNTIMES_DIR), e.g. the repository's functions/runtimes",
            config.runtimes_dir.display()
        )));
    }
    Ok(())
}

/// The sandbox helper: `kappa-sandbox` beside this executable when there is one built from the
/// same sandbox code (a program with only the sandbox in it: each instance's monitor and init
/// start faster and take far less memory than copies of the whole platform would), otherwise
/// this executable itself (`kappa_sandbox::run_if_requested` in its `main`).
fn helper() -> Result<std::path::PathBuf, PlatformError> {
    let exe = std::env::current_exe().ctx("locating the kappa executable")?;
    let small = exe.with_file_name("kappa-sandbox");
    if small.is_file() {
        if kappa_sandbox::helper::identify(&small) {
            tracing::info!(helper = %small.display(), "sandbox helper");
            return Ok(small);
        }
        tracing::warn!(
            helper = %small.display(),
            "ignoring a kappa-sandbox built from other sandbox code than this kappa; \
             instances start through kappa itself"
        );
    }
    Ok(exe)
}

fn registry_gone() -> PlatformError {
    PlatformError::config("the metrics registry is gone")
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, PlatformError> {
    TcpListener::bind(addr)
        .await
        .with_ctx(|| format!("binding the {what} listener to {addr} (is another kappa running? choose another address with the flag)"))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, PlatformError> {
    listener.local_addr().ctx("reading a listener's address")
}
