//! The builder: the watch loop, and one package's build from source to deployment archive.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use kappa_archive::ExtractLimits;
use kappa_core::{BackendError, Limits};
use kappa_local::{BuildOutcome, BuildOutput, BuildSandbox, BuildSpec, RuntimeRegistry};
use kappa_store::{CacheEvent, Item, Precondition, Store, StoreError, StoredObject, WatchCache};
use kappa_types::{Archive, ArchiveType, BuildStatus, Environment, Kind, Package, PackageStatus};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::archives::BuildArchives;
use crate::command;
use crate::error::{BuildError, at};
use crate::index::{BuildIndex, IndexEntry, build_key};
use crate::workdir;

/// Default number of builds that run at once.
pub const DEFAULT_PARALLELISM: usize = 2;
/// Default bound on the build log kept in a package's status (the end of the output). Every
/// status write is kept in the store's event history, so this stays well below the sandbox's
/// capture bound.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;

/// How often the builder looks at every package even when nothing changed (level-triggered:
/// a missed event is picked up by the next pass).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// One build as a [`BuildRunner`] gets it.
#[derive(Debug, Clone, Copy)]
pub struct BuildJob<'a> {
    /// The build: its id, its root directory on this machine (the source in `src/`), the
    /// command (already in Fission's layout, run by `/bin/sh -c` in the root), limits, timeout
    /// and log bound.
    pub spec: &'a BuildSpec,
    /// The command as the package or environment gave it (before the layout was added).
    pub command: &'a str,
    /// The package's namespace and name.
    pub namespace: &'a str,
    pub package: &'a str,
    /// The source archive (sha256 in the archive store) and, for a non-zip one, its file name.
    pub source_sha256: &'a str,
    pub source_filename: Option<&'a str>,
    /// The package's environment (its builder and runtime images, resources, placement).
    pub environment: &'a Environment,
}

/// What a [`BuildRunner`] did: the command's output and where its result is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRun {
    /// How the command ended, and its log.
    pub output: BuildOutput,
    /// Where the result of a successful command is.
    pub result: RunResult,
}

/// Where a build's result is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunResult {
    /// In the build's root on this machine: the builder stores it (a local build).
    InRoot,
    /// Stored already by the runner (a builder pod uploads it through the API).
    Stored(crate::steps::StoredResult),
    /// The runner could not store it: why (said in the build log; the build fails).
    Refused(String),
}

/// Runs build commands: locally [`BuildSandbox`], in a cluster builder pods
/// (`kappa_kube::builds::PodBuildRunner`); a test may use anything.
#[async_trait]
pub trait BuildRunner: Send + Sync + 'static {
    /// Runs one build.
    async fn run(&self, job: &BuildJob<'_>) -> Result<BuildRun, BackendError>;

    /// How builds are isolated, for the build log (`sandbox namespaces, cgroups v2`).
    fn describe(&self) -> String;

    /// Whether commands run on this host, with its interpreters (the built-in runtimes'
    /// default commands name them), rather than in the environment's image (a builder pod:
    /// the defaults then use the image's own `python3 -m pip` or `npm`).
    fn on_this_host(&self) -> bool {
        true
    }
}

#[async_trait]
impl BuildRunner for BuildSandbox {
    async fn run(&self, job: &BuildJob<'_>) -> Result<BuildRun, BackendError> {
        Ok(BuildRun {
            output: BuildSandbox::run(self, job.spec).await?,
            result: RunResult::InRoot,
        })
    }

    fn describe(&self) -> String {
        format!(
            "sandbox {}, cgroups {}",
            if self.sandboxed() {
                "namespaces"
            } else {
                "none (UNSANDBOXED)"
            },
            self.cgroup_version()
                .map_or("none".to_owned(), |v| v.to_string())
        )
    }
}

/// How the builder works.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// The builder's own directory: `work/` (build directories, emptied at start) and
    /// `index/` (the de-duplication index).
    pub state_dir: PathBuf,
    /// Builds that run at once (at least 1).
    pub parallelism: usize,
    /// A build running longer is killed and fails.
    pub timeout: Duration,
    /// The most of a build's output kept in the package's status (the end of it).
    pub max_log_bytes: usize,
    /// pids limit applied when the environment sets none.
    pub default_pids_limit: Option<u64>,
    /// Whether builds may use the network (pip and npm need their registries).
    pub network: bool,
    /// Bounds the build's result must stay within: the deployment is extracted with them.
    pub extract_limits: ExtractLimits,
}

impl BuilderConfig {
    /// The defaults, with the builder's directory at `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            parallelism: DEFAULT_PARALLELISM,
            timeout: kappa_local::DEFAULT_BUILD_TIMEOUT,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            default_pids_limit: Some(1024),
            network: true,
            extract_limits: ExtractLimits::default(),
        }
    }
}

/// The builder. Cheap to clone.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuilderConfig,
    store: Arc<dyn Store>,
    archives: Arc<dyn BuildArchives>,
    runner: Arc<dyn BuildRunner>,
    runtimes: RuntimeRegistry,
    index: BuildIndex,
    work_dir: PathBuf,
    /// Bounds the builds running at once; a semaphore so queued builds wait in order without
    /// holding anything else.
    slots: Arc<Semaphore>,
    /// Packages (namespace, name) with a build queued or running: one build per package at a
    /// time. A std mutex: held for one set operation, never across an await.
    active: Mutex<HashSet<(String, String)>>,
    /// Woken when a build ends, so the loop looks again at once (the package may have become
    /// pending again while it ran). `notify_one` keeps a wake-up that arrives between two
    /// waits.
    finished: Notify,
}

/// What a build produced, or why it failed; both carry the log.
enum Built {
    Deployed { deployment: Archive, log: String },
    Failed { log: String },
}

impl Builder {
    /// A builder over `store` and `archives`, running builds with `runner` and resolving
    /// environments' runtimes with `runtimes` (for the default build commands). Creates its
    /// directories and empties `work/` (what a crashed run left).
    pub fn new(
        config: BuilderConfig,
        store: Arc<dyn Store>,
        archives: Arc<impl BuildArchives>,
        runner: Arc<dyn BuildRunner>,
        runtimes: RuntimeRegistry,
    ) -> Result<Self, BuildError> {
        let work_dir = config.state_dir.join("work");
        workdir::remove(&work_dir).map_err(at(&work_dir))?;
        std::fs::create_dir_all(&work_dir).map_err(at(&work_dir))?;
        let index = BuildIndex::open(config.state_dir.join("index"))?;
        let slots = Arc::new(Semaphore::new(config.parallelism.max(1)));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                archives,
                runner,
                runtimes,
                index,
                work_dir,
                slots,
                active: Mutex::new(HashSet::new()),
                finished: Notify::new(),
            }),
        })
    }

    /// Runs until `shutdown`: first puts packages a crashed run left `running` back to
    /// `pending`, then lists and watches packages and builds every pending source package.
    /// Builds in progress at shutdown are abandoned (their process is killed); their packages
    /// stay `running` and are built again at the next start.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.recover().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "builder: listing packages failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(
            parallelism = self.inner.config.parallelism,
            timeout_s = self.inner.config.timeout.as_secs(),
            isolation = %self.inner.runner.describe(),
            "builder started"
        );
        let tasks = tokio_util::task::TaskTracker::new();
        let mut packages = WatchCache::<Package>::new(Arc::clone(&self.inner.store));
        let resync = tokio::time::sleep(RESYNC_INTERVAL);
        tokio::pin!(resync);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                // A finished build frees a slot, and changes to its package were skipped while
                // it ran: look at every package again (as on the periodic resync).
                () = &mut resync => {}
                () = self.inner.finished.notified() => {}
                event = packages.next() => {
                    match event {
                        CacheEvent::Listed(items) => {
                            for item in items {
                                self.consider(&item, &tasks, &shutdown);
                            }
                        }
                        CacheEvent::Applied(item) => self.consider(&item, &tasks, &shutdown),
                        CacheEvent::Removed(_) | CacheEvent::Replayed(_) => {}
                    }
                    continue;
                }
            }
            resync
                .as_mut()
                .reset(tokio::time::Instant::now() + RESYNC_INTERVAL);
            for item in packages.items() {
                self.consider(item, &tasks, &shutdown);
            }
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("builder stopped");
    }

    /// Puts packages left `running` (by a platform that died mid-build) back to `pending`.
    async fn recover(&self) -> Result<(), StoreError> {
        let list = self.inner.store.list(Kind::Package, None).await?;
        for object in list.items {
            let Ok(package) = Package::from_json(object.value.clone()) else {
                continue;
            };
            if package.status.buildstatus != BuildStatus::Running {
                continue;
            }
            let status = PackageStatus {
                buildstatus: BuildStatus::Pending,
                buildlog: "the platform stopped during the build: building again\n".into(),
                last_update_timestamp: Some(now()),
            };
            match self
                .write_status(&object, status, object.resource_version)
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %object.namespace, package = %object.name, "interrupted build queued again");
                }
                Err(e) => {
                    tracing::warn!(namespace = %object.namespace, package = %object.name, error = %e, "could not queue an interrupted build again");
                }
            }
        }
        Ok(())
    }

    /// Starts a build task for a pending source package unless one is queued or running.
    fn consider(
        &self,
        item: &Item<Package>,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let package = &item.value;
        if package.status.buildstatus != BuildStatus::Pending || package.spec.source.is_none() {
            return;
        }
        let key = (item.key.namespace.clone(), item.key.name.clone());
        {
            let mut active = self
                .inner
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !active.insert(key.clone()) {
                return;
            }
        }
        let this = self.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let slot = match this.inner.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    this.mark_queued(&key.0, &key.1).await;
                    tokio::select! {
                        () = shutdown.cancelled() => None,
                        slot = this.inner.slots.clone().acquire_owned() => slot.ok(),
                    }
                }
            };
            if let Some(_slot) = slot {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        tracing::info!(namespace = %key.0, package = %key.1, "build abandoned at shutdown");
                    }
                    () = this.build(&key.0, &key.1) => {}
                }
            }
            this.inner
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            this.inner.finished.notify_one();
        });
    }

    /// Says in a pending package's log that a builder has it and it waits for a build slot (so
    /// a client can tell a queued build from a platform without a builder).
    async fn mark_queued(&self, namespace: &str, name: &str) {
        let Ok(Some(object)) = self.inner.store.get(Kind::Package, namespace, name).await else {
            return;
        };
        if !wants_build(&object.value) || object.value["status"]["buildlog"].is_string() {
            return;
        }
        let status = PackageStatus {
            buildstatus: BuildStatus::Pending,
            buildlog: format!(
                "queued: waiting for a free build slot ({} builds run at once)\n",
                self.inner.config.parallelism.max(1)
            ),
            last_update_timestamp: Some(now()),
        };
        if let Err(e) = self
            .write_status(&object, status, object.resource_version)
            .await
        {
            tracing::debug!(namespace, package = name, error = %e, "could not mark a package queued");
        }
    }

    /// Builds one package if it is (still) a pending source package.
    async fn build(&self, namespace: &str, name: &str) {
        let store = &self.inner.store;
        let object = match store.get(Kind::Package, namespace, name).await {
            Ok(Some(object)) if wants_build(&object.value) => object,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(namespace, package = name, error = %e, "builder: reading the package failed");
                return;
            }
        };
        let package = match Package::from_json(object.value.clone()) {
            Ok(package) => package,
            Err(e) => {
                tracing::warn!(namespace, package = name, error = %e, "builder: unreadable package");
                return;
            }
        };
        let running = PackageStatus {
            buildstatus: BuildStatus::Running,
            buildlog: String::new(),
            last_update_timestamp: Some(now()),
        };
        let running = match self
            .write_status(&object, running, object.resource_version)
            .await
        {
            Ok(running) => running,
            Err(e) => {
                // Changed meanwhile: the next pass looks again.
                tracing::debug!(namespace, package = name, error = %e, "builder: package changed before its build");
                return;
            }
        };
        tracing::info!(namespace, package = name, "build started");
        let built = self.execute(&package).await;
        match built {
            Built::Deployed { deployment, log } => {
                let log = bound_log(log, self.inner.config.max_log_bytes);
                let mut value = running.value.clone();
                value["spec"]["deployment"] =
                    serde_json::to_value(&deployment).unwrap_or(serde_json::Value::Null);
                if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    meta.remove("resourceVersion");
                }
                let written = store
                    .put(
                        value,
                        Precondition::ResourceVersion(running.resource_version),
                    )
                    .await;
                let written = match written {
                    Ok(written) => written,
                    Err(e) => {
                        tracing::info!(namespace, package = name, error = %e, "package changed during its build; result discarded");
                        return;
                    }
                };
                let status = PackageStatus {
                    buildstatus: BuildStatus::Succeeded,
                    buildlog: log,
                    last_update_timestamp: Some(now()),
                };
                match self
                    .write_status(&written, status, written.resource_version)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(namespace, package = name, deployment = ?deployment.stored_sha256(), "build succeeded")
                    }
                    Err(e) => {
                        tracing::info!(namespace, package = name, error = %e, "package changed after its build")
                    }
                }
            }
            Built::Failed { log } => {
                let status = PackageStatus {
                    buildstatus: BuildStatus::Failed,
                    buildlog: bound_log(log, self.inner.config.max_log_bytes),
                    last_update_timestamp: Some(now()),
                };
                match self
                    .write_status(&running, status, running.resource_version)
                    .await
                {
                    Ok(_) => tracing::info!(namespace, package = name, "build failed"),
                    Err(e) => {
                        tracing::info!(namespace, package = name, error = %e, "package changed during its build; result discarded")
                    }
                }
            }
        }
    }

    async fn write_status(
        &self,
        object: &StoredObject,
        status: PackageStatus,
        version: u64,
    ) -> Result<StoredObject, StoreError> {
        let status =
            serde_json::to_value(status).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.inner
            .store
            .put_status(
                Kind::Package,
                &object.namespace,
                &object.name,
                status,
                Precondition::ResourceVersion(version),
            )
            .await
    }

    /// From source to deployment archive.
    async fn execute(&self, package: &Package) -> Built {
        let fail = |log: String| Built::Failed { log };
        let Some(source) = package.spec.source.as_ref() else {
            return fail("the package has no source archive\n".into());
        };
        let env_ref = &package.spec.environment;
        let environment = match self
            .inner
            .store
            .get(Kind::Environment, &env_ref.namespace, &env_ref.name)
            .await
        {
            Ok(Some(object)) => match Environment::from_json(object.value) {
                Ok(env) => env,
                Err(e) => {
                    return fail(format!(
                        "environment {}/{} is unreadable: {e}\n",
                        env_ref.namespace, env_ref.name
                    ));
                }
            },
            Ok(None) => {
                return fail(format!(
                    "environment {}/{} not found: create it, then run `kappa pkg rebuild {}`\n",
                    env_ref.namespace, env_ref.name, package.metadata.name
                ));
            }
            Err(e) => return fail(format!("reading the environment failed: {e}\n")),
        };
        let source_sha = match self.source_sha(source).await {
            Ok(sha) => sha,
            Err(message) => return fail(format!("{message}\n")),
        };
        let extracted = match self
            .inner
            .archives
            .extracted(&source_sha, source.filename.as_deref())
            .await
        {
            Ok(extracted) => extracted,
            Err(e) => {
                return fail(format!(
                    "the source archive (sha256 {source_sha}) was refused: {e}\n"
                ));
            }
        };
        let runtime = self
            .inner
            .runtimes
            .resolve(
                &environment.spec.runtime.image,
                environment.spec.runtime.command.as_deref(),
            )
            .ok();
        let source_dir = match &extracted {
            kappa_archive::Extracted::Dir(dir) => dir.clone(),
            kappa_archive::Extracted::File(file) => {
                file.parent().map(PathBuf::from).unwrap_or_default()
            }
        };
        let builder_command = environment
            .spec
            .builder
            .as_ref()
            .map(|b| b.command.as_str());
        let chosen = if self.inner.runner.on_this_host() {
            command::choose(
                package.spec.buildcmd.as_deref(),
                builder_command,
                runtime.as_ref(),
                &source_dir,
            )
        } else {
            // In the image: the commands as given, else the image's default for its runtime.
            command::choose(
                package.spec.buildcmd.as_deref(),
                builder_command,
                None,
                &source_dir,
            )
            .or_else(|| {
                command::image_default_command(
                    self.inner
                        .runtimes
                        .builtin_for(&environment.spec.runtime.image),
                    &source_dir,
                )
            })
        };
        let Some(chosen) = chosen else {
            return Built::Deployed {
                deployment: source.clone(),
                log: format!(
                    "nothing to build: no buildcmd, no builder command and no {} for runtime {}; the source is deployed as is\n",
                    command::BUILD_MANIFESTS.join(" or "),
                    runtime
                        .as_ref()
                        .map_or(environment.spec.runtime.image.as_str(), |r| r.name())
                ),
            };
        };

        let fingerprint = environment_fingerprint(&environment, runtime.as_ref());
        let key = build_key(&source_sha, &chosen.command, &fingerprint);
        // A package built before and pending again was asked to rebuild (`kappa pkg rebuild`,
        // a changed spec): it gets a fresh build rather than the earlier result.
        if package.spec.deployment.is_none()
            && let Some(reused) = self.reuse(&key).await
        {
            return reused;
        }

        let limits = Limits {
            memory_bytes: environment.spec.resources.memory_limit_bytes(),
            cpu_millis: environment.spec.resources.cpu_limit_millis(),
            pids: environment
                .spec
                .resources
                .limits
                .pids
                .or(self.inner.config.default_pids_limit),
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The build's root: `src/` holds the source ($SRC_PKG, the working directory) and
        // `deploy` ($DEPLOY_PKG) does not exist until the build creates it.
        let dir = self.inner.work_dir.join(&id);
        let prepared = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || workdir::prepare_root(&extracted, &dir)).await
        };
        let guard = DirGuard(dir.clone());
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(format!("preparing the build directory failed: {e}\n")),
            Err(e) => return fail(format!("preparing the build directory failed: {e}\n")),
        }
        let header = format!(
            "building with {} ({}; timeout {} s):\n$ {}\n",
            chosen.source.describe(),
            self.inner.runner.describe(),
            self.inner.config.timeout.as_secs(),
            chosen.command
        );
        let spec = BuildSpec {
            id,
            dir: dir.clone(),
            command: workdir::fission_layout(&chosen.command),
            env: [("PIP_ROOT_USER_ACTION".to_owned(), "ignore".to_owned())]
                .into_iter()
                .collect(),
            read_only: chosen.read_only.clone(),
            limits,
            timeout: self.inner.config.timeout,
            network: self.inner.config.network,
            max_log_bytes: self.inner.config.max_log_bytes,
        };
        let job = BuildJob {
            spec: &spec,
            command: &chosen.command,
            namespace: &package.metadata.namespace,
            package: &package.metadata.name,
            source_sha256: &source_sha,
            source_filename: source.filename.as_deref(),
            environment: &environment,
        };
        let (output, run_result) = match self.inner.runner.run(&job).await {
            Ok(run) => (run.output, run.result),
            Err(e) => return fail(format!("{header}the build could not run: {e}\n")),
        };
        let mut log = header;
        if output.log_truncated {
            log.push_str("[... earlier output dropped ...]\n");
        }
        log.push_str(&output.log);
        if !log.ends_with('\n') {
            log.push('\n');
        }
        match output.outcome {
            BuildOutcome::Succeeded => {}
            BuildOutcome::Failed(reason) => {
                log.push_str(&format!("build failed: the command {reason}\n"));
                return fail(log);
            }
            BuildOutcome::TimedOut(after) => {
                log.push_str(&format!(
                    "build failed: it ran longer than the build timeout of {} s and was killed\n",
                    after.as_secs()
                ));
                return fail(log);
            }
        }
        let stored = match run_result {
            RunResult::InRoot => {
                crate::steps::store_result(
                    self.inner.archives.as_ref(),
                    &dir,
                    self.inner.config.extract_limits,
                )
                .await
            }
            RunResult::Stored(stored) => Ok(stored),
            RunResult::Refused(message) => Err(message),
        };
        let deployment = match stored {
            Ok(stored) => {
                if let Some(note) = stored.note {
                    log.push_str(&note);
                    log.push('\n');
                }
                stored.deployment
            }
            Err(message) => {
                log.push_str(&format!("build failed: {message}\n"));
                return fail(log);
            }
        };
        drop(guard);
        log.push_str(&format!(
            "build succeeded: deployment archive sha256 {deployment}\n"
        ));
        let entry = IndexEntry {
            deployment: deployment.clone(),
            log: log.clone(),
            built_at: now(),
        };
        if let Err(e) = self.inner.index.put(&key, &entry) {
            tracing::warn!(error = %e, "could not record the build in the index");
        }
        Built::Deployed {
            deployment: Archive::stored(&deployment, None),
            log,
        }
    }

    /// The source archive's digest in the archive store (a literal is stored first).
    async fn source_sha(&self, source: &Archive) -> Result<String, String> {
        let sha = match source.kind {
            ArchiveType::Url => match source.stored_sha256() {
                Some(sha) => sha.to_owned(),
                None => {
                    return Err(format!(
                        "the source archive URL {:?} is not fetched locally: upload the archive (kappa pkg update --src) instead",
                        source.url.as_deref().unwrap_or_default()
                    ));
                }
            },
            ArchiveType::Literal => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(source.literal.as_deref().unwrap_or_default())
                    .map_err(|e| format!("the literal source archive is not base64: {e}"))?;
                self.inner
                    .archives
                    .put_bytes(&bytes)
                    .await
                    .map_err(|e| format!("storing the literal source archive failed: {e}"))?
            }
        };
        if let Some(checksum) = &source.checksum
            && checksum.sum != sha
        {
            return Err(format!(
                "the source archive's checksum does not match: it is sha256 {sha}, the package says {}",
                checksum.sum
            ));
        }
        Ok(sha)
    }

    /// The earlier build with this key, when its archive is still stored.
    async fn reuse(&self, key: &str) -> Option<Built> {
        let entry = match self.inner.index.get(key) {
            Ok(entry) => entry?,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable build index entry");
                self.inner.index.remove(key);
                return None;
            }
        };
        match self.inner.archives.exists(&entry.deployment).await {
            Ok(true) => {
                tracing::info!(deployment = %entry.deployment, "identical build found; reusing its archive");
                Some(Built::Deployed {
                    deployment: Archive::stored(&entry.deployment, None),
                    log: format!(
                        "reused the deployment archive of an identical build (same source, command and environment) from {}:\n{}",
                        entry.built_at, entry.log
                    ),
                })
            }
            _ => {
                self.inner.index.remove(key);
                None
            }
        }
    }
}

/// Checks a build's result against the extraction limits, zips it and stores the zip in
/// `archives`; returns its sha256.
pub(crate) async fn pack_and_store(
    archives: &dyn BuildArchives,
    result: &workdir::BuildResult,
    limits: ExtractLimits,
) -> Result<String, String> {
    let packed = {
        let result = result.clone();
        tokio::task::spawn_blocking(move || match result {
            workdir::BuildResult::Dir(dir) => {
                let size = workdir::measure(&dir, &limits)
                    .map_err(|e| format!("reading the build's result failed: {e}"))?;
                workdir::check(size, &limits)?;
                kappa_archive::pack_dir(&dir).map_err(|e| format!("packing the result failed: {e}"))
            }
            workdir::BuildResult::File(file) => {
                let len = std::fs::metadata(&file)
                    .map_err(|e| format!("reading the build's result failed: {e}"))?
                    .len();
                let size = workdir::TreeSize {
                    entries: 1,
                    bytes: len,
                    largest_file: len,
                };
                workdir::check(size, &limits)?;
                kappa_archive::pack_file(&file)
                    .map_err(|e| format!("packing the result failed: {e}"))
            }
        })
        .await
        .map_err(|e| format!("packing the result failed: {e}"))??
    };
    archives
        .put_bytes(&packed)
        .await
        .map_err(|e| format!("storing the deployment archive failed: {e}"))
}

/// Removes a build directory when dropped (on every path out of a build).
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.0);
        let remove = move || {
            if let Err(e) = workdir::remove(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a build directory");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

/// Whether a stored package is a source package waiting for its build.
fn wants_build(value: &serde_json::Value) -> bool {
    let status = value["status"]["buildstatus"].as_str().unwrap_or("pending");
    status == "pending" && !value["spec"]["source"].is_null()
}

/// What of an environment can change a build's result: its runtime, builder, limits, and the
/// interpreter the runtime resolves to on this host.
fn environment_fingerprint(
    environment: &Environment,
    runtime: Option<&kappa_local::ResolvedRuntime>,
) -> String {
    let interpreter = match runtime {
        Some(kappa_local::ResolvedRuntime::BuiltIn(b)) => b.interpreter.display().to_string(),
        Some(kappa_local::ResolvedRuntime::Command(c)) => c.clone(),
        None => String::new(),
    };
    serde_json::json!({
        "runtime": environment.spec.runtime,
        "builder": environment.spec.builder,
        "limits": environment.spec.resources.limits,
        "interpreter": interpreter,
    })
    .to_string()
}

/// The end of `log`, at most `max` bytes, starting at a line.
fn bound_log(log: String, max: usize) -> String {
    if log.len() <= max {
        return log;
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    let tail = &log[start..];
    let tail = tail.find('\n').map_or(tail, |i| &tail[i + 1..]);
    format!("[... earlier output dropped ...]\n{tail}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_from_the_end() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let bounded = bound_log(log.clone(), 50);
        assert!(bounded.ends_with("line 99\n"), "{bounded}");
        assert!(bounded.starts_with("[... earlier output dropped ...]\nline "));
        assert_eq!(bound_log("short\n".into(), 50), "short\n");
    }

    #[test]
    fn only_pending_source_packages_want_a_build() {
        let pending =
            serde_json::json!({"spec": {"source": {}}, "status": {"buildstatus": "pending"}});
        assert!(wants_build(&pending));
        let no_status = serde_json::json!({"spec": {"source": {}}});
        assert!(wants_build(&no_status));
        let deployed =
            serde_json::json!({"spec": {"deployment": {}}, "status": {"buildstatus": "pending"}});
        assert!(!wants_build(&deployed));
        let done =
            serde_json::json!({"spec": {"source": {}}, "status": {"buildstatus": "succeeded"}});
        assert!(!wants_build(&done));
    }
}
