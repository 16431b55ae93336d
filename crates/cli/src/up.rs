//! `kappa up`: the whole platform in one process (API server, embedded store, pool manager with
//! the local backend, router), with the bundled example deployed.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `kappa up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the store, archives, logs and instances live.
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
}

/// Runs the platform until SIGINT/SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("kappa up is being wired: {args:?}")
}
