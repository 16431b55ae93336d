//! `kappa up`: the whole platform in one process, a preset of `kappa_platform`'s assembly
//! (every role, the embedded store, the built-in runtimes), with the bundled example deployed
//! and the way to reach it printed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use kappa_platform::{Config, Platform, Role, local};

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
    /// The NATS server (JetStream) of message-queue triggers without `metadata.url`.
    #[arg(long, env = "KAPPA_NATS_URL", default_value = kappa_triggers::DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// The Redis server of message-queue triggers without `metadata.url`.
    #[arg(long, env = "KAPPA_REDIS_URL", default_value = kappa_triggers::DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// The Kafka cluster of message-queue triggers without `metadata.bootstrapServers`:
    /// `kafka://host:port[,host:port...]` (or `host:port,...`).
    #[arg(long, env = "KAPPA_KAFKA_URL", default_value = kappa_triggers::DEFAULT_KAFKA_URL)]
    pub kafka_url: String,
    #[command(flatten)]
    pub limits: crate::flags::Limits,
}

/// Runs the platform until SIGINT/SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(local::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let token = local::load_or_create_token(&data_dir)?;
    let runtimes_dir = local::install_runtimes(&data_dir)?;

    let platform = Platform::build(
        config(&args, data_dir.clone(), runtimes_dir, token.clone()),
        &Role::ALL,
    )
    .await?;
    let address = |what: &str| {
        platform
            .address(what)
            .map(|addr| format!("http://{addr}"))
            .with_context(|| format!("the {what} listener is not bound"))
    };
    let router_url = address("router")?;
    let api_url = address("api")?;
    let admin_url = address("router-internal")?;
    let isolation = match platform.isolation() {
        Some(i) if i.sandboxed && i.egress => {
            "sandboxed (own namespaces and user per instance; egress through slirp4netns)"
        }
        Some(i) if i.sandboxed => "sandboxed (own namespaces and user per instance; no egress)",
        _ => "UNSANDBOXED: functions run as this user with access to everything it can reach",
    };

    if !args.no_example {
        local::deploy_example(&platform)
            .await
            .context("deploying the bundled hello example")?;
    }

    // Written last: its presence tells scripts (and the CLI) that everything announced below
    // is served, the example's route included.
    local::write_client_config(&data_dir, &api_url, &token, &router_url)?;

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

    crate::server::wait_for_signal().await?;
    platform.shutdown().await;
    Ok(())
}

/// The one-machine preset with `kappa up`'s flags applied.
fn config(args: &UpArgs, data_dir: PathBuf, runtimes_dir: PathBuf, token: String) -> Config {
    let mut config = Config::one_machine(data_dir, runtimes_dir, token);
    config.listen.router = args.router_addr;
    config.listen.api = args.api_addr;
    config.listen.router_admin = args.admin_addr;
    config.metrics_need_token = args.metrics_need_token;
    args.limits.apply(&mut config);
    config.nats_url = args.nats_url.clone();
    config.redis_url = args.redis_url.clone();
    config.kafka_url = args.kafka_url.clone();
    config
}
