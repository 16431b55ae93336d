//! Shared helpers: a backend over temporary stores, fixtures, a plain HTTP client, waiting.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kappa_archive::{ArchiveStore, pack_dir};
use kappa_core::{
    Backend, ExitReason, FunctionId, InstanceAddr, InstanceEvent, InstanceSpec, Limits,
    SpecializeRequest,
};
use kappa_local::{CgroupMode, LocalBackend, LocalConfig, RuntimeRegistry, SandboxMode};
use kappa_logs::{LogConfig, LogStore};
use tokio::sync::broadcast;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The built-in runtimes (the real Python runtime server).
pub fn runtimes_dir() -> PathBuf {
    repo_root().join("functions/runtimes")
}

/// The Python runtime's test functions (`crash.py`, `memhog.py`, ...).
pub fn python_testdata() -> PathBuf {
    repo_root().join("functions/testdata/python")
}

/// This crate's fixture functions (`probe.py`, `forkbomb.py`).
pub fn probe_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe")
}

/// The sandbox helper executable built with this crate.
pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kappa-sandbox"))
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Prints why a test is skipped (visible with `--nocapture` and in nextest's output).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// A backend over temporary archive and log stores.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub archives: Arc<ArchiveStore>,
    pub logs: Arc<LogStore>,
    pub backend: LocalBackend,
}

impl Harness {
    pub async fn new(test: &str) -> Self {
        Self::with(test, SandboxMode::Namespaces, CgroupMode::Auto).await
    }

    pub async fn with(test: &str, sandbox: SandboxMode, cgroups: CgroupMode) -> Self {
        Self::configured(test, |config| {
            config.sandbox = sandbox;
            config.cgroups = cgroups;
        })
        .await
    }

    /// A harness whose configuration `adjust` changes.
    pub async fn configured(test: &str, adjust: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let archives = Arc::new(
            ArchiveStore::open(dir.path().join("archives"), 64 << 20).expect("archive store"),
        );
        let logs = Arc::new(
            LogStore::open(dir.path().join("logs"), LogConfig::default()).expect("log store"),
        );
        let mut config = LocalConfig::new(
            dir.path().join("local"),
            RuntimeRegistry::new(runtimes_dir()),
        );
        config.helper = Some(helper());
        adjust(&mut config);
        let backend = LocalBackend::new(config, archives.clone(), logs.clone())
            .await
            .expect("local backend starts");
        eprintln!(
            "{test}: local backend with sandbox={} cgroups={}",
            if backend.sandboxed() {
                "namespaces"
            } else {
                "none"
            },
            backend
                .cgroup_version()
                .map_or("none".to_owned(), |v| v.to_string())
        );
        Self {
            dir,
            archives,
            logs,
            backend,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    /// Zips a directory into the archive store; returns its digest.
    pub async fn put_dir(&self, dir: &Path) -> String {
        let zip = pack_dir(dir).expect("pack");
        self.archives.put_bytes(&zip).await.expect("put").sha256
    }

    /// Stores a file's raw bytes (not a zip); returns its digest.
    pub async fn put_file(&self, file: &Path) -> String {
        let bytes = std::fs::read(file).expect("read fixture");
        self.archives.put_bytes(&bytes).await.expect("put").sha256
    }

    /// Creates a Python instance with `limits` and waits for it to be healthy.
    pub async fn create(&self, prefix: &str, limits: Limits) -> kappa_core::Instance {
        self.backend
            .create(spec(prefix, limits))
            .await
            .expect("instance starts")
    }

    /// Zips `dir`, then specializes `instance` with entrypoint `entry`.
    pub async fn specialize_dir(&self, instance: &kappa_core::Instance, dir: &Path, entry: &str) {
        let sha = self.put_dir(dir).await;
        self.backend
            .specialize(instance, &request(&sha, entry, None))
            .await
            .expect("specialize");
    }
}

/// A Python instance spec with a unique id.
pub fn spec(prefix: &str, limits: Limits) -> InstanceSpec {
    InstanceSpec {
        id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        environment: FunctionId::new("default", "python"),
        env_generation: 1,
        image: "python".into(),
        command: None,
        limits,
        grace: Duration::from_secs(2),
        concurrency: 2,
        env: BTreeMap::new(),
        labels: BTreeMap::from([("environment".to_owned(), "python".to_owned())]),
        egress: true,
        host_ports: Vec::new(),
        zygote: None,
    }
}

pub fn request(sha: &str, entry: &str, filename: Option<&str>) -> SpecializeRequest {
    SpecializeRequest {
        function: FunctionId::new("default", "fn"),
        generation: 1,
        archive_sha256: sha.to_owned(),
        filename: filename.map(str::to_owned),
        entrypoint: entry.to_owned(),
        env: BTreeMap::new(),
        files: Vec::new(),
        timeout: Duration::from_secs(10),
        egress: true,
        host_ports: Vec::new(),
    }
}

/// `GET path` with a plain hyper client; `Err` when the connection fails or breaks.
pub async fn get(addr: &InstanceAddr, path: &str) -> Result<(u16, String), String> {
    let stream = kappa_sandbox::connector::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.authority())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The next exit event of instance `id`.
pub async fn exit_of(events: &mut broadcast::Receiver<InstanceEvent>, id: &str) -> ExitReason {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(InstanceEvent::Exited { id: got, reason }) if got == id => return reason,
                Ok(_) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no exit event for instance {id}"))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Every live process carrying `KAPPA_INSTANCE_ID=<id>`.
pub fn processes_of(id: &str) -> Vec<i32> {
    let wanted = format!("KAPPA_INSTANCE_ID={id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|entry| entry == wanted.as_bytes())
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// The instances recorded in a data directory's state file.
pub fn state_instances(data_dir: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(data_dir.join("instances.json")).unwrap_or_else(|_| "{}".into());
    let value: serde_json::Value = serde_json::from_str(&text).expect("state file is JSON");
    value["instances"].as_array().cloned().unwrap_or_default()
}
