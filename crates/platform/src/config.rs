//! What the platform is made of: the roles a process runs and the typed settings they share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kappa_local::{CgroupMode, EgressMode, SandboxMode, ZygoteMode};

use crate::error::PlatformError;

/// A component of the platform. `kappa up` runs all of them; `kappa server --role` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API (the only writer of desired state) and archive storage.
    Api,
    /// The public router (HTTP triggers, warm admission, proxy).
    Router,
    /// The pool manager with its instance backend, and its HTTP API for routers.
    Executor,
    /// Message-queue and time trigger workers, and asynchronous invocations.
    Triggers,
    /// The package builder: turns source packages into deployment archives.
    Builder,
}

impl Role {
    /// Every role, in the order they are assembled.
    pub const ALL: [Role; 5] = [
        Role::Api,
        Role::Router,
        Role::Executor,
        Role::Triggers,
        Role::Builder,
    ];

    /// The name used on the command line, in logs and in `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Router => "router",
            Role::Executor => "executor",
            Role::Triggers => "triggers",
            Role::Builder => "builder",
        }
    }
}

/// Where desired state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A redb file (one process only).
    Embedded(PathBuf),
    /// The kappa.dev custom resources of the cluster.
    Kubernetes,
}

impl StoreConfig {
    /// Parses `embedded:<path>` or `kubernetes`; `None` is `embedded:<data-dir>/kappa.redb`.
    pub fn parse(spec: Option<&str>, data_dir: &Path) -> Result<Self, PlatformError> {
        let Some(spec) = spec else {
            return Ok(Self::Embedded(data_dir.join("kappa.redb")));
        };
        if spec == "kubernetes" {
            return Ok(Self::Kubernetes);
        }
        let Some(path) = spec.strip_prefix("embedded:") else {
            return Err(PlatformError::config(format!(
                "--store {spec:?} is not valid: expected embedded:<path> or kubernetes"
            )));
        };
        if path.is_empty() {
            return Err(PlatformError::config(
                "--store embedded: needs a file path, e.g. embedded:/var/lib/kappa/kappa.redb",
            ));
        }
        Ok(Self::Embedded(PathBuf::from(path)))
    }
}

/// The instance backend of the executor role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Processes on this machine (`kappa_local`).
    Local,
    /// Pods (`kappa_kube`).
    Kubernetes,
}

/// The public router URL the API reports to clients (`GET /v1/info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterUrl {
    /// Not reported.
    Unknown,
    /// This URL (e.g. the cluster's ingress).
    Given(String),
    /// The router listener of this process, as bound (`kappa up`).
    Listener,
}

/// What runs the builder role's build commands. Selected in one place,
/// [`crate::assemble`]'s `build_runner`: a new kind of runner is a variant here and an arm there.
#[derive(Clone)]
pub enum BuildRunnerKind {
    /// The built-in sandbox of this machine (`kappa_local::BuildSandbox`), with the same
    /// isolation, egress and cgroup settings as local instances.
    LocalSandbox,
    /// A builder pod per build (Kubernetes: `kappa server --store kubernetes`), the archives
    /// through the API (`kappa_kube::builds`).
    Pods,
    /// A runner supplied by the caller.
    Custom(Arc<dyn kappa_builder::BuildRunner>),
}

impl std::fmt::Debug for BuildRunnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LocalSandbox => f.write_str("LocalSandbox"),
            Self::Pods => f.write_str("Pods"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The listeners of a process. A role's listener is bound only when the role runs.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The API server (role api).
    pub api: SocketAddr,
    /// The public router (role router).
    pub router: SocketAddr,
    /// The router's internal listener: health, metrics, token-protected invoke and debug views.
    pub router_admin: SocketAddr,
    /// The executor's HTTP API for remote routers (role executor); `None`: not served (only a
    /// router in this process uses the executor).
    pub executor: Option<SocketAddr>,
    /// The process admin listener (`/healthz`, `/readyz` of every role, `/metrics`); `None`:
    /// none (`kappa up`, where the router's internal listener serves health).
    pub admin: Option<SocketAddr>,
}

/// Every setting of the platform; built by `kappa up` (a preset) or from `kappa server`'s
/// flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Archives, logs, builds and local instances live here.
    pub data_dir: PathBuf,
    /// Desired state.
    pub store: StoreConfig,
    /// The runtime servers of the local backend and the builder (`<dir>/python/server.py`, ...).
    pub runtimes_dir: PathBuf,
    /// The platform token: the API, the executor API and the router's internal listener
    /// require it, and the roles authenticate each other with it.
    pub token: String,
    /// Where each role listens.
    pub listen: Listen,
    /// Require the token on `/metrics` too.
    pub metrics_need_token: bool,
    /// The executor API the router uses instead of an executor in this process.
    pub executor_url: Option<String>,
    /// The router's internal listener as the API and trigger roles reach it, when no router
    /// runs in this process.
    pub router_admin_url: Option<String>,
    /// The public router URL the API reports.
    pub router_url: RouterUrl,
    /// This replica's name (usage reports, leases, pod ownership).
    pub replica: String,
    /// The asynchronous invocation worker's node name (its leases).
    pub async_node: String,
    /// The executor's instance backend.
    pub backend: BackendKind,
    /// Kubernetes: the namespace function pods run in [default: this pod's].
    pub function_namespace: Option<String>,
    /// Router with a remote executor: watch function pods' readiness (`None`: when
    /// `function_namespace` is set and a client can be built).
    pub pod_readiness: Option<bool>,
    /// Kubernetes backend: the image of the pods' fetcher container.
    pub fetcher_image: Option<String>,
    /// Kubernetes backend: the API server as the fetchers reach it.
    pub internal_api_url: Option<String>,
    /// Default brokers of message-queue triggers and asynchronous invocations.
    pub nats_url: String,
    pub redis_url: String,
    pub kafka_url: String,
    /// Isolation, egress and cgroups of local instances and builds.
    pub sandbox: SandboxMode,
    pub egress: EgressMode,
    pub cgroups: CgroupMode,
    /// Sandboxed local Python instances forked from a template per environment, or exec'd.
    pub zygote: ZygoteMode,
    /// Spare sandboxes kept per environment whose instances come from its template.
    pub spare_sandboxes: usize,
    /// Requests that may wait per function at capacity.
    pub queue_limit: usize,
    /// Largest request body the router forwards.
    pub max_body_bytes: u64,
    /// Largest archive the API accepts.
    pub max_archive_bytes: u64,
    /// Most instances at once.
    pub max_instances: usize,
    /// Memory the warm pools may hold in all.
    pub pool_memory_budget: Option<u64>,
    /// How long shutdown drains: the router's in-flight requests, the pool manager's instances.
    pub shutdown_grace: Duration,
    /// How long finished asynchronous invocations are kept.
    pub async_retention: Duration,
    /// Idle upgraded connections are closed after this long.
    pub upgrade_idle_timeout: Duration,
    /// Router threads serving the public listener (0: on the process's shared runtime).
    pub router_threads: usize,
    /// A build running longer fails.
    pub build_timeout: Duration,
    /// Builds at once.
    pub build_parallelism: usize,
    /// What runs builds.
    pub build_runner: BuildRunnerKind,
    /// The API refuses Environments whose runtime the local backend cannot start.
    pub check_local_runtimes: bool,
}

impl Config {
    /// The settings' defaults around the given data directory, runtimes and token (the
    /// defaults of `kappa server`'s flags).
    pub fn new(data_dir: PathBuf, runtimes_dir: PathBuf, token: String) -> Self {
        let replica = std::env::var("HOSTNAME")
            .ok()
            .unwrap_or_else(|| format!("kappa-{}", uuid::Uuid::new_v4().simple()));
        Self {
            store: StoreConfig::Embedded(data_dir.join("kappa.redb")),
            data_dir,
            runtimes_dir,
            token,
            listen: Listen {
                api: SocketAddr::from(([0, 0, 0, 0], 8890)),
                router: SocketAddr::from(([0, 0, 0, 0], 8888)),
                router_admin: SocketAddr::from(([0, 0, 0, 0], 8889)),
                executor: Some(SocketAddr::from(([0, 0, 0, 0], 8891))),
                admin: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            },
            metrics_need_token: false,
            executor_url: None,
            router_admin_url: None,
            router_url: RouterUrl::Unknown,
            async_node: replica.clone(),
            replica,
            backend: BackendKind::Local,
            function_namespace: None,
            pod_readiness: None,
            fetcher_image: None,
            internal_api_url: None,
            nats_url: kappa_triggers::DEFAULT_NATS_URL.into(),
            redis_url: kappa_triggers::DEFAULT_REDIS_URL.into(),
            kafka_url: kappa_triggers::DEFAULT_KAFKA_URL.into(),
            sandbox: SandboxMode::Namespaces,
            egress: EgressMode::Auto,
            cgroups: CgroupMode::Auto,
            zygote: ZygoteMode::On,
            spare_sandboxes: kappa_local::DEFAULT_SPARES,
            queue_limit: 100,
            max_body_bytes: 64 << 20,
            max_archive_bytes: 256 << 20,
            max_instances: 256,
            pool_memory_budget: None,
            shutdown_grace: Duration::from_secs(10),
            async_retention: Duration::from_secs(24 * 3600),
            upgrade_idle_timeout: Duration::from_secs(600),
            router_threads: 0,
            build_timeout: Duration::from_secs(600),
            build_parallelism: 2,
            build_runner: BuildRunnerKind::LocalSandbox,
            check_local_runtimes: false,
        }
    }

    /// `kappa up`'s preset: everything on this machine's loopback (router 8888, its internal
    /// listener 8889, API 8890), no executor API and no process admin listener (one process
    /// needs neither), the router URL reported as bound, the API refusing runtimes the local
    /// backend cannot start, and one asynchronous-invocation node per data directory ("local",
    /// so a restarted process takes its own leases over at once).
    pub fn one_machine(data_dir: PathBuf, runtimes_dir: PathBuf, token: String) -> Self {
        let mut config = Self::new(data_dir, runtimes_dir, token);
        config.listen = Listen {
            api: SocketAddr::from(([127, 0, 0, 1], 8890)),
            router: SocketAddr::from(([127, 0, 0, 1], 8888)),
            router_admin: SocketAddr::from(([127, 0, 0, 1], 8889)),
            executor: None,
            admin: None,
        };
        config.router_url = RouterUrl::Listener;
        config.async_node = "local".into();
        config.check_local_runtimes = true;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_are_checked() {
        let dir = Path::new("/d");
        let e = StoreConfig::parse(Some("etcd://x"), dir).unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
        let e = StoreConfig::parse(Some("embedded:"), dir).unwrap_err();
        assert!(e.to_string().contains("file path"), "{e}");
        assert_eq!(
            StoreConfig::parse(None, dir).unwrap(),
            StoreConfig::Embedded(PathBuf::from("/d/kappa.redb"))
        );
        assert_eq!(
            StoreConfig::parse(Some("kubernetes"), dir).unwrap(),
            StoreConfig::Kubernetes
        );
    }
}
