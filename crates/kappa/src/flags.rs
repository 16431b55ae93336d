//! The flags `kappa up` and `kappa server` share: isolation and limits of instances, requests
//! and builds, and how long shutdown drains.

use std::time::Duration;

use kappa_local::{CgroupMode, EgressMode, SandboxMode, ZygoteMode};
use kappa_platform::Config;

/// Isolation and limits, the same for `kappa up` and `kappa server`.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
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
    /// Spare sandboxes kept assembled ahead of time per environment whose instances are
    /// forked from its template, so that a start without a warm instance only claims one
    /// (0: every sandbox is assembled on its start).
    #[arg(long, env = "KAPPA_SPARE_SANDBOXES", default_value_t = kappa_local::DEFAULT_SPARES)]
    pub spare_sandboxes: usize,
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
    #[arg(long, env = "KAPPA_POOL_MEMORY_BUDGET", value_name = "SIZE", value_parser = kappa_cli::output::parse_memory_size)]
    pub pool_memory_budget: Option<u64>,
    /// Seconds to drain in-flight requests and stop instances on shutdown.
    #[arg(long, env = "KAPPA_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// How long finished asynchronous invocations are kept.
    #[arg(long, env = "KAPPA_ASYNC_RETENTION", default_value = "24h", value_parser = kappa_cli::output::parse_duration)]
    pub async_retention: Duration,
    /// An upgraded (WebSocket) connection with no byte either way for this long
    /// is closed.
    #[arg(long, env = "KAPPA_UPGRADE_IDLE_TIMEOUT", default_value = "10m", value_parser = kappa_cli::output::parse_duration)]
    pub upgrade_idle_timeout: Duration,
    /// Threads serving the router's public listener, each with its own event loop, listener
    /// (SO_REUSEPORT) and upstream connections; 0 serves it on the process's shared runtime.
    #[arg(long, env = "KAPPA_ROUTER_THREADS", default_value_t = 0)]
    pub router_threads: usize,
    /// Seconds a package build may run before it is killed (and fails).
    #[arg(long, env = "KAPPA_BUILD_TIMEOUT", default_value_t = 600)]
    pub build_timeout: u64,
    /// Package builds that run at once.
    #[arg(long, env = "KAPPA_BUILD_PARALLELISM", default_value_t = 2)]
    pub build_parallelism: usize,
}

impl Limits {
    /// Sets these on `config`.
    pub fn apply(&self, config: &mut Config) {
        config.sandbox = self.sandbox;
        config.egress = self.egress;
        config.cgroups = self.cgroups;
        config.zygote = self.zygote;
        config.spare_sandboxes = self.spare_sandboxes;
        config.queue_limit = self.queue_limit;
        config.max_body_bytes = self.max_body_mb << 20;
        config.max_archive_bytes = self.max_archive_mb << 20;
        config.max_instances = self.max_instances;
        config.pool_memory_budget = self.pool_memory_budget;
        config.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        config.async_retention = self.async_retention;
        config.upgrade_idle_timeout = self.upgrade_idle_timeout;
        config.router_threads = self.router_threads;
        config.build_timeout = Duration::from_secs(self.build_timeout);
        config.build_parallelism = self.build_parallelism;
    }
}
