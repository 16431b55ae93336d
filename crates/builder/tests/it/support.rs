//! A builder over a MemoryStore with real archives and the real build sandbox.

use std::sync::Arc;
use std::time::Duration;

use kappa_archive::ArchiveStore;
use kappa_builder::{Builder, BuilderConfig};
use kappa_local::{BuildSandbox, CgroupMode, RuntimeRegistry, SandboxMode};
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_types::{Archive, Kind, Package};
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Arc<MemoryStore>,
    pub archives: Arc<ArchiveStore>,
    pub runtimes: RuntimeRegistry,
    pub sandbox: Arc<BuildSandbox>,
    shutdown: Option<CancellationToken>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtimes_dir = dir.path().join("runtimes");
        std::fs::create_dir_all(runtimes_dir.join("python")).unwrap();
        std::fs::write(runtimes_dir.join("python/server.py"), "").unwrap();
        let archives = Arc::new(ArchiveStore::open(dir.path().join("archives"), 64 << 20).unwrap());
        // Unsandboxed: these tests check the builder; sandboxed builds are tested with the
        // sandbox helper in kappa-local's tests and through `kappa up` in the system tests.
        let sandbox = Arc::new(
            BuildSandbox::new(
                SandboxMode::None,
                None,
                kappa_local::EgressMode::Off,
                CgroupMode::Auto,
                &dir.path().join("sandbox"),
            )
            .await
            .unwrap(),
        );
        let env = Self {
            runtimes: RuntimeRegistry::new(runtimes_dir),
            store: Arc::new(MemoryStore::new()),
            archives,
            sandbox,
            dir,
            shutdown: None,
            task: None,
        };
        env.put(serde_json::json!({
            "apiVersion": "kappa.dev/v1", "kind": "Environment",
            "metadata": {"name": "python", "namespace": "default"},
            "spec": {"runtime": {"image": "python"}}
        }))
        .await;
        env
    }

    pub fn config(&self) -> BuilderConfig {
        BuilderConfig::new(self.dir.path().join("builds"))
    }

    /// Starts the builder with `config`.
    pub fn start(&mut self, config: BuilderConfig) {
        let builder = Builder::new(
            config,
            self.store.clone(),
            self.archives.clone(),
            self.sandbox.clone(),
            self.runtimes.clone(),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        self.task = Some(tokio::spawn(async move { builder.run(token).await }));
        self.shutdown = Some(shutdown);
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            s.cancel();
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("the builder stops")
                .unwrap();
        }
    }

    pub async fn put(&self, value: serde_json::Value) {
        self.store.put(value, Precondition::None).await.unwrap();
    }

    /// Stores the directory `files` describes as a zip and returns it as a stored archive.
    pub async fn source(&self, files: &[(&str, &str)]) -> Archive {
        let src = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = src.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let zip = kappa_archive::pack_dir(src.path()).unwrap();
        let info = self.archives.put_bytes(&zip).await.unwrap();
        Archive::stored(&info.sha256, None)
    }

    /// Creates a source package with `status` (pending unless given).
    pub async fn package(
        &self,
        name: &str,
        source: &Archive,
        buildcmd: Option<&str>,
        status: &str,
    ) {
        let mut spec = serde_json::json!({
            "environment": {"name": "python", "namespace": "default"},
            "source": source,
        });
        if let Some(cmd) = buildcmd {
            spec["buildcmd"] = cmd.into();
        }
        self.put(serde_json::json!({
            "apiVersion": "kappa.dev/v1", "kind": "Package",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
            "status": {"buildstatus": status},
        }))
        .await;
    }

    pub async fn get(&self, name: &str) -> Package {
        let obj = self
            .store
            .get(Kind::Package, "default", name)
            .await
            .unwrap()
            .unwrap();
        Package::from_json(obj.value).unwrap()
    }

    /// Waits (bounded) until the package's build status is one of `done`.
    pub async fn wait_for(&self, name: &str, done: &[&str]) -> Package {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let p = self.get(name).await;
            let status = serde_json::to_value(p.status.buildstatus).unwrap();
            if done.iter().any(|d| status == *d) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "package {name} still {status} (log: {})",
                p.status.buildlog
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The files of a stored zip archive, extracted.
    pub async fn files(&self, archive: &Archive) -> std::path::PathBuf {
        let sha = archive.stored_sha256().unwrap();
        match self.archives.extracted(sha, None).await.unwrap() {
            kappa_archive::Extracted::Dir(d) => d,
            other => panic!("expected a directory, got {other:?}"),
        }
    }
}
