//! `kappa server --role api|router|executor|triggers|builder`: one component of the platform per
//! process, as the Helm chart runs them (one Deployment per role), configured from flags with
//! `KAPPA_...` environment variables as fallbacks: the flags become a `kappa_platform::Config`
//! and `kappa_platform::Platform::build` starts the roles, the same assembly `kappa up` uses.
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
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kappa_platform::{BackendKind, Config, Listen, Platform, Role, RouterUrl, StoreConfig};

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
    #[command(flatten)]
    pub limits: crate::flags::Limits,
}

/// Runs the roles until SIGINT/SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let platform = Platform::build(config, &args.roles).await?;
    if let Some(isolation) = platform.isolation() {
        if isolation.sandboxed {
            println!(
                "isolation sandboxed (egress {})",
                if isolation.egress { "on" } else { "off" }
            );
        } else {
            println!("isolation UNSANDBOXED (--sandbox none)");
        }
    }
    for (what, addr) in platform.listeners() {
        // One line per listener on stdout, stable for scripts and tests to read.
        println!("listening {what} {addr}");
        tracing::info!(listener = what, %addr, "listening");
    }
    wait_for_signal().await?;
    platform.shutdown().await;
    Ok(())
}

/// The platform's configuration from the flags.
fn config(args: &ServerArgs) -> anyhow::Result<Config> {
    let token = load_token(args)?;
    let runtimes_dir = args
        .runtimes_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("runtimes"));
    let mut config = Config::new(args.data_dir.clone(), runtimes_dir, token);
    config.store = StoreConfig::parse(args.store.as_deref(), &args.data_dir)?;
    // On Kubernetes the builder role builds in builder pods; elsewhere in this machine's sandbox.
    if config.store == StoreConfig::Kubernetes {
        config.build_runner = kappa_platform::BuildRunnerKind::Pods;
    }
    config.listen = Listen {
        api: args.api_addr,
        router: args.router_addr,
        router_admin: args.router_admin_addr,
        executor: Some(args.executor_addr),
        admin: Some(args.admin_addr),
    };
    config.metrics_need_token = args.metrics_need_token;
    config.executor_url = args.executor_url.clone();
    config.router_admin_url = args.router_admin_url.clone();
    config.router_url = match &args.router_url {
        Some(url) => RouterUrl::Given(url.clone()),
        None => RouterUrl::Unknown,
    };
    config.replica = replica_name(args);
    config.async_node = config.replica.clone();
    config.backend = match args.backend.as_str() {
        "kubernetes" => BackendKind::Kubernetes,
        "local" => BackendKind::Local,
        other => bail!("--backend {other:?} is not valid: expected local or kubernetes"),
    };
    config.function_namespace = args.function_namespace.clone();
    config.pod_readiness = args.pod_readiness;
    config.fetcher_image = args.fetcher_image.clone();
    config.internal_api_url = args.internal_api_url.clone();
    if let Some(url) = &args.nats_url {
        config.nats_url = url.clone();
    }
    if let Some(url) = &args.redis_url {
        config.redis_url = url.clone();
    }
    if let Some(url) = &args.kafka_url {
        config.kafka_url = url.clone();
    }
    args.limits.apply(&mut config);
    Ok(config)
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

/// This replica's name: `--replica`, else `$HOSTNAME` (the pod name in a cluster).
fn replica_name(args: &ServerArgs) -> String {
    args.replica
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("kappa-{}", uuid::Uuid::new_v4().simple()))
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn server_args(flags: &[&str]) -> ServerArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServerArgs,
        }
        let argv = ["kappa", "--role", "router"].iter().chain(flags);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn flags_become_the_platforms_config() {
        let off = server_args(&["--pod-readiness=no", "--function-namespace", "fns"]);
        assert_eq!(off.pod_readiness, Some(false));
        assert_eq!(server_args(&[]).pod_readiness, None);
        assert_eq!(
            server_args(&["--pod-readiness", "true"]).pod_readiness,
            Some(true)
        );
        let args = server_args(&[
            "--token",
            "0123456789abcdef0123",
            "--shutdown-grace",
            "42",
            "--store",
            "embedded:/x/k.redb",
        ]);
        let config = config(&args).unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(42));
        assert_eq!(
            config.store,
            StoreConfig::Embedded(PathBuf::from("/x/k.redb"))
        );
        let e = config_error(&["--token", "0123456789abcdef0123", "--store", "etcd://x"]);
        assert!(e.contains("not valid"), "{e}");
        let e = config_error(&["--token", "short"]);
        assert!(e.contains("too short"), "{e}");
    }

    fn config_error(flags: &[&str]) -> String {
        config(&server_args(flags)).unwrap_err().to_string()
    }

    #[test]
    fn every_role_is_a_flag_value() {
        let cli = server_args(&["--role", "api,router,executor,triggers,builder"]);
        assert_eq!(cli.roles.len(), 6, "{:?}", cli.roles);
        for role in Role::ALL {
            assert!(cli.roles.contains(&role), "{role:?}");
        }
    }
}
