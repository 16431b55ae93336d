//! Starts a local backend, creates two Python instances, prints them, then waits forever.
//!
//! The orphan-cleanup test runs this, kills it with SIGKILL, and checks that the instances died
//! with it and that a new backend on the same data directory cleans up what is left.
//!
//! ```text
//! cargo run -p kappa-local --example hold -- <data-dir> <runtimes-dir> [namespaces|none]
//! ```
//!
//! Output, one line each: `mode sandbox=<namespaces|none> cgroups=<v1|v2|none>`,
//! `instance <id> <pid> <addr>` twice, then `ready`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kappa_archive::ArchiveStore;
use kappa_core::{Backend, FunctionId, InstanceSpec, Limits};
use kappa_local::{LocalBackend, LocalConfig, RuntimeRegistry, SandboxMode};
use kappa_logs::{LogConfig, LogStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // This program is its own sandbox helper.
    if let Some(code) = kappa_sandbox::run_if_requested() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(hold())
}

async fn hold() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(data_dir), Some(runtimes_dir)) = (args.next(), args.next()) else {
        return Err("usage: hold <data-dir> <runtimes-dir> [namespaces|none]".into());
    };
    let sandbox: SandboxMode = match args.next() {
        Some(mode) => mode.to_string_lossy().parse()?,
        None => SandboxMode::Namespaces,
    };
    let data_dir = PathBuf::from(data_dir);
    let archives = Arc::new(ArchiveStore::open(data_dir.join("archives"), 64 << 20)?);
    let logs = Arc::new(LogStore::open(data_dir.join("logs"), LogConfig::default())?);
    let mut config = LocalConfig::new(
        data_dir.join("local"),
        RuntimeRegistry::new(runtimes_dir.into()),
    );
    config.sandbox = sandbox;
    config.helper = Some(std::env::current_exe()?);
    let backend = LocalBackend::new(config, archives, logs).await?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "mode sandbox={} cgroups={}",
        if backend.sandboxed() {
            "namespaces"
        } else {
            "none"
        },
        backend
            .cgroup_version()
            .map_or("none".to_owned(), |v| v.to_string())
    )?;
    for n in 0..2 {
        let id = format!("hold-{}-{n}", std::process::id());
        let spec = InstanceSpec {
            id: id.clone(),
            environment: FunctionId::new("default", "python"),
            env_generation: 1,
            image: "python".into(),
            command: None,
            limits: Limits {
                memory_bytes: Some(256 << 20),
                cpu_millis: Some(1000),
                pids: Some(64),
            },
            grace: Duration::from_secs(1),
            concurrency: 1,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            egress: false,
            host_ports: Vec::new(),
            zygote: None,
        };
        let instance = backend.create(spec).await?;
        let pid = backend.info(&id).map(|i| i.pid).unwrap_or_default();
        writeln!(out, "instance {id} {pid} {}", instance.addr)?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}
