//! [`LocalBackend`]: runtime instances as child processes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kappa_archive::{ArchiveStore, Extracted};
use kappa_core::{
    Backend, BackendError, ConfigKind, ExitReason, FunctionId, Instance, InstanceAddr,
    InstanceEvent, InstanceSpec, SpecializeRequest,
};
use kappa_logs::{InstanceLog, LogStore, LogStream};
use kappa_runtime::place;
use kappa_runtime::{SPECIALIZE_PATH, SpecializeBody, runtime_error};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cgroup::{CgroupVersion, Cgroups, InstanceCgroup};
use crate::config::{EgressMode, LocalConfig, ZygoteMode};
use crate::hostports::{self, HostPorts};
use crate::http;
use crate::procs::{self, INSTANCE_ID_VAR};
use crate::runtime::{ResolvedRuntime, RuntimeRegistry};
use crate::sandbox::{
    self, InstanceDirs, SANDBOX_CONFIGS, SANDBOX_PORT, SANDBOX_SECRETS, SANDBOX_USERFUNC, Sandbox,
};
use crate::spare::{Spare, SpareKey, SpareStats, Spares};
use crate::state::{self, InstanceRecord};
use crate::zygote::Zygotes;

/// Capacity of the exit event channel; a subscriber that lags further loses the oldest events
/// (and is told so by `broadcast`).
const EVENT_CAPACITY: usize = 1024;
/// Attempts at starting an instance when its port turned out to be taken.
const PORT_ATTEMPTS: u32 = 4;
/// Pause between two `/healthz` polls.
const HEALTH_POLL: Duration = Duration::from_millis(2);
/// Bound on opening the connections of `Backend::prepare`.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one `/healthz` call while starting.
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long `delete` waits for an instance after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an early exit waits for the rest of the instance's stderr.
const STDERR_DRAIN: Duration = Duration::from_secs(1);
/// Bytes of an instance's stderr kept to explain an early exit.
const STDERR_TAIL_BYTES: usize = 4096;
/// Lines of stderr quoted in a start error.
const STDERR_TAIL_LINES: usize = 20;
/// Buffer between the stderr tee and the log pump.
const LOG_PIPE_BYTES: usize = 64 * 1024;
/// Concurrent process starts queued for the spawner thread.
const SPAWN_QUEUE: usize = 256;
/// The longest instance id (it names directories and cgroups).
const MAX_ID_LEN: usize = 128;
/// The variable naming the directory holding the instance's secrets (`/secrets` sandboxed).
pub(crate) const SECRETS_DIR_VAR: &str = "KAPPA_SECRETS_DIR";
/// The variable naming the directory holding the instance's config maps (`/configs` sandboxed).
pub(crate) const CONFIGS_DIR_VAR: &str = "KAPPA_CONFIGS_DIR";

/// The local backend: each instance is a child process running an environment's runtime
/// server, in the built-in sandbox (its own namespaces and user; the runtime listens on port
/// 8888 of the sandbox's own loopback, reached through the sandbox's connector) unless the
/// sandbox was switched off explicitly, limited through cgroups when available. Cheap to clone.
///
/// Instances are started from one dedicated thread and carry a parent-death signal (the
/// sandbox monitor's, or `setpriv --pdeathsig KILL` unsandboxed): they die when the platform
/// process dies, however it dies, and also when the last handle to the backend is dropped
/// without [`Backend::shutdown`]. Call `shutdown` for a graceful stop.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("data_dir", &self.inner.data_dir)
            .field("sandboxed", &self.inner.sandbox.is_some())
            .field("cgroups", &self.inner.cgroups.version())
            .finish_non_exhaustive()
    }
}

/// What the backend knows about one live instance, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance id.
    pub id: String,
    /// Where its runtime server is reached.
    pub addr: InstanceAddr,
    /// The first process of the instance (the sandbox's monitor when sandboxed), leader of its
    /// own process group.
    pub pid: u32,
    /// `data_dir/instances/<id>`, holding `userfunc/` and `work/`.
    pub dir: PathBuf,
    /// The instance's cgroup directories (empty without cgroups).
    pub cgroups: Vec<PathBuf>,
    /// Whether it runs in the sandbox (its code is then at `/userfunc` inside).
    pub sandboxed: bool,
    /// The user and group its processes run as, when sandboxed.
    pub user: Option<(u32, u32)>,
}

struct Inner {
    data_dir: PathBuf,
    instances_dir: PathBuf,
    runtimes: RuntimeRegistry,
    start_timeout: Duration,
    archives: Arc<ArchiveStore>,
    logs: Arc<LogStore>,
    /// The built-in sandbox; `None` only when it was switched off explicitly.
    sandbox: Option<Sandbox>,
    /// The environments' template processes (sandboxed only).
    zygotes: Option<Zygotes>,
    /// Sandboxes assembled ahead of time for template starts (sandboxed only).
    spares: Option<Spares>,
    /// Numbers the sandboxes' connector sockets.
    next_socket: AtomicU64,
    /// `setpriv`, which gives unsandboxed instances their parent-death signal.
    setpriv: Option<PathBuf>,
    cgroups: Cgroups,
    /// Live instances. A std mutex: every critical section is a map operation, never across an
    /// `.await`; the exit tasks, `delete` and `list` all touch it.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Ids being started, so two creates of one id cannot race.
    starting: Mutex<HashSet<String>>,
    /// Serialises state file writes so an older snapshot never replaces a newer one.
    state_lock: Mutex<()>,
    /// Exit events; a broadcast channel because the pool manager and diagnostics may each
    /// subscribe, and a slow subscriber must not block instance cleanup.
    events: broadcast::Sender<InstanceEvent>,
    spawner: Spawner,
    closed: AtomicBool,
}

struct Live {
    instance: Instance,
    pid: i32,
    dir: PathBuf,
    cgroup: InstanceCgroup,
    log: InstanceLog,
    sandboxed: bool,
    /// The sandbox's user and group.
    user: Option<(u32, u32)>,
    /// The sandbox's connector socket, removed when the instance ends.
    socket: Option<PathBuf>,
    /// The instance's user-mode networking (`slirp4netns`), ended with the instance (and at
    /// specialization for a function without egress). A std mutex: taken, never awaited.
    egress: Mutex<Option<Child>>,
    /// The host ports relayed into the sandbox (`hostPorts`), closed with the instance.
    host_ports: HostPorts,
    record: InstanceRecord,
    /// Set by `delete`, so the exit line says the stop was deliberate.
    deleting: AtomicBool,
    /// Becomes `true` once the exit task finished cleaning up.
    done: watch::Receiver<bool>,
    /// Connections to the runtime opened by `prepare` while the instance waits in a pool.
    opened: Mutex<Opened>,
}

/// Connections to a generic instance's runtime opened in advance (`Backend::prepare`), so
/// neither the specialization nor the first request pays for a connection (the sandbox
/// connector's round trip, the TCP handshake, the runtime's accept).
#[derive(Default)]
struct Opened {
    /// For `POST /v2/specialize`.
    control: Option<tokio::net::TcpStream>,
    /// Handed to the router for the first request (`Backend::take_connection`).
    first: Option<tokio::net::TcpStream>,
}

/// Whether a connection opened in advance is still usable: not closed by the runtime (its
/// idle timeout, or an exit) and with nothing unread. Never blocks.
fn still_open(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl LocalBackend {
    /// Starts the backend: detects the sandbox and cgroups, ends whatever an earlier run left in
    /// `data_dir` (processes from its state file, their directories and cgroups, stale
    /// `kappa-*` cgroups of dead platform processes), and starts with no instances.
    pub async fn new(
        config: LocalConfig,
        archives: Arc<ArchiveStore>,
        logs: Arc<LogStore>,
    ) -> Result<Self, BackendError> {
        let LocalConfig {
            data_dir,
            runtimes,
            sandbox: sandbox_mode,
            helper,
            egress,
            cgroups: cgroup_mode,
            start_timeout,
            zygote,
            spares,
        } = config;
        let instances_dir = data_dir.join("instances");
        std::fs::create_dir_all(&instances_dir).map_err(|e| {
            BackendError::Io(format!("cannot create {}: {e}", instances_dir.display()))
        })?;

        let sandbox = Sandbox::detect(sandbox_mode, helper.as_deref(), egress, &data_dir)
            .await
            .map_err(|why| BackendError::Start(format!("cannot sandbox instances: {why}")))?;
        // The sandbox's monitor carries its own parent-death signal; setpriv (one more exec per
        // start) is only needed without it.
        let setpriv = match &sandbox {
            Some(sandbox) => {
                if !sandbox.egress_available() && egress == EgressMode::Auto {
                    tracing::warn!(
                        "instances and builds have no network egress: slirp4netns is not installed \
                         (apt-get install slirp4netns), so sandboxes have a loopback interface only"
                    );
                }
                None
            }
            None => {
                tracing::warn!(
                    "instances are UNSANDBOXED (--sandbox none): functions run as the platform's \
                     own user with access to everything it can reach"
                );
                let setpriv = sandbox::detect_setpriv().await;
                if setpriv.is_none() {
                    tracing::warn!(
                        "setpriv --pdeathsig is unavailable: instances may outlive a killed platform until its next start"
                    );
                }
                setpriv
            }
        };
        let cgroups = Cgroups::detect(cgroup_mode)?;
        cgroups.clean_stale().await;
        recover(&data_dir, &instances_dir).await?;

        let spawner = Spawner::new(tokio::runtime::Handle::current())
            .map_err(|e| BackendError::Io(format!("cannot start the spawner thread: {e}")))?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let zygotes = sandbox
            .as_ref()
            .map(|s| Zygotes::new(zygote, s.sockets_dir().to_path_buf()));
        let spares_per_env = spares;
        let spares = zygotes.as_ref().map(|_| Spares::new(spares_per_env));
        tracing::info!(
            data_dir = %data_dir.display(),
            sandbox = if sandbox.is_some() { "namespaces" } else { "unsandboxed" },
            egress = sandbox.as_ref().is_some_and(Sandbox::egress_available),
            zygote = %zygotes.as_ref().map_or(ZygoteMode::Off, Zygotes::mode),
            spares = spares_per_env,
            cgroups = cgroups.version().map_or("none".to_owned(), |v| v.to_string()),
            runtimes = ?runtimes.names(),
            "local backend started"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                data_dir,
                instances_dir,
                runtimes,
                start_timeout,
                archives,
                logs,
                sandbox,
                zygotes,
                spares,
                next_socket: AtomicU64::new(0),
                setpriv,
                cgroups,
                live: Mutex::new(HashMap::new()),
                starting: Mutex::new(HashSet::new()),
                state_lock: Mutex::new(()),
                events,
                spawner,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Whether instances run in the sandbox.
    pub fn sandboxed(&self) -> bool {
        self.inner.sandbox.is_some()
    }

    /// Whether sandboxed instances get network egress.
    pub fn egress(&self) -> bool {
        self.inner
            .sandbox
            .as_ref()
            .is_some_and(Sandbox::egress_available)
    }

    /// The cgroup hierarchy enforcing limits, if any.
    pub fn cgroup_version(&self) -> Option<CgroupVersion> {
        self.inner.cgroups.version()
    }

    /// The spare sandboxes: how many are ready and what became of them
    /// (`docs/design/011-spare-sandboxes.md`).
    pub fn spare_stats(&self) -> SpareStats {
        self.inner
            .spares
            .as_ref()
            .map(Spares::stats)
            .unwrap_or_default()
    }

    /// The monitors' pids of the spare sandboxes ready now.
    pub fn spare_pids(&self) -> Vec<u32> {
        self.inner.spares.as_ref().map_or_else(Vec::new, |s| {
            s.ready_pids()
                .into_iter()
                .filter_map(|p| u32::try_from(p).ok())
                .collect()
        })
    }

    /// Details of a live instance.
    pub fn info(&self, id: &str) -> Option<InstanceInfo> {
        let live = self.inner.live().get(id).cloned()?;
        Some(InstanceInfo {
            id: live.instance.id.clone(),
            addr: live.instance.addr.clone(),
            pid: u32::try_from(live.pid).unwrap_or_default(),
            dir: live.dir.clone(),
            cgroups: live.cgroup.dirs.clone(),
            sandboxed: live.sandboxed,
            user: live.user,
        })
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn isolation(&self) -> Option<String> {
        Some(
            match &self.inner.sandbox {
                Some(sandbox) if sandbox.egress_available() => {
                    "sandboxed: own namespaces and user per instance, egress through slirp4netns"
                }
                Some(_) => "sandboxed: own namespaces and user per instance, no egress",
                None => "unsandboxed: functions run as the platform's user (--sandbox none)",
            }
            .to_owned(),
        )
    }

    async fn create(&self, spec: InstanceSpec) -> Result<Instance, BackendError> {
        self.inner.create(spec).await
    }

    async fn specialize(
        &self,
        instance: &Instance,
        request: &SpecializeRequest,
    ) -> Result<(), BackendError> {
        let result = self.inner.specialize(instance, request).await;
        if let Some(spares) = &self.inner.spares {
            spares.specialized(&instance.id);
        }
        result
    }

    async fn prepare(&self, instance: &Instance) {
        self.inner.prepare(instance).await;
    }

    fn take_connection(&self, id: &str) -> Option<std::net::TcpStream> {
        let live = self.inner.live().get(id).cloned()?;
        let first = live
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first
            .take()?;
        if !still_open(&first) {
            return None;
        }
        first.into_std().ok()
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        self.inner.delete(id, grace).await
    }

    async fn list(&self) -> Result<Vec<Instance>, BackendError> {
        let mut instances: Vec<Instance> = self
            .inner
            .live()
            .values()
            .map(|l| l.instance.clone())
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.inner.events.subscribe()
    }

    async fn shutdown(&self, grace: Duration) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let ids: Vec<String> = self.inner.live().keys().cloned().collect();
        let mut deletes = JoinSet::new();
        for id in ids {
            let inner = self.inner.clone();
            deletes.spawn(async move {
                if let Err(e) = inner.delete(&id, grace).await {
                    tracing::warn!(instance = %id, error = %e, "instance did not stop cleanly at shutdown");
                }
            });
        }
        while deletes.join_next().await.is_some() {}
        if let Some(spares) = &self.inner.spares {
            spares.close().await;
        }
        if let Some(zygotes) = &self.inner.zygotes {
            zygotes.stop_all().await;
        }
        self.inner.cgroups.remove_bases();
        self.inner.save_state();
        tracing::info!("local backend shut down");
    }

    async fn environment_removed(&self, env: &FunctionId) {
        if let Some(spares) = &self.inner.spares {
            spares.remove_env(env);
        }
        if let Some(zygotes) = &self.inner.zygotes {
            zygotes.stop(env).await;
        }
    }
}

/// Why one start attempt failed, and whether another port may help.
struct StartFailure {
    error: BackendError,
    port_taken: bool,
}

impl Inner {
    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the reservation of an id taken by `create`.
    fn release(&self, id: &str) {
        self.starting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    fn save_state(&self) {
        let _guard = self
            .state_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let records: Vec<InstanceRecord> = self.live().values().map(|l| l.record.clone()).collect();
        if let Err(e) = state::write(&self.data_dir, records) {
            tracing::warn!(dir = %self.data_dir.display(), error = %e, "could not write the instance state file");
        }
    }

    async fn create(self: &Arc<Self>, spec: InstanceSpec) -> Result<Instance, BackendError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BackendError::Start(
                "the local backend is shutting down".into(),
            ));
        }
        check_id(&spec.id)?;
        if self.live().contains_key(&spec.id)
            || !self
                .starting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(spec.id.clone())
        {
            return Err(BackendError::Start(format!(
                "instance id {:?} is already in use",
                spec.id
            )));
        }
        // Releases the id however `create` ends; if its future is dropped half-way, only after
        // cleaning up what the abandoned start left.
        let mut guard = StartGuard {
            inner: self.clone(),
            id: spec.id.clone(),
            pid: None,
            cgroup: None,
            dir: None,
            template: false,
        };
        let result = self.create_reserved(&spec, &mut guard).await;
        // A start of an environment whose instances come from its template keeps a spare
        // sandbox ready for the next one, assembled once this instance is specialized (its
        // first request is then on its way) or a moment later, so that the assembly does not
        // contend with the start, its specialization and first request for the CPU and the
        // cgroup locks.
        if guard.template
            && let Some(spares) = &self.spares
            && spares.enabled()
        {
            let specialized = spares.after_start(&spec.id);
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(crate::spare::REPLENISH_DELAY, specialized.notified())
                    .await;
                if let Some(inner) = inner.upgrade() {
                    if let Some(spares) = &inner.spares {
                        spares.specialized(&spec.id);
                    }
                    inner.replenish_spares(&spec);
                }
            });
        }
        result
    }

    /// Assembles spare sandboxes for `spec`'s environment in the background, up to the
    /// configured number.
    fn replenish_spares(self: &Arc<Self>, spec: &InstanceSpec) {
        let Some(spares) = &self.spares else {
            return;
        };
        while spares.reserve(spec) {
            let inner = self.clone();
            let spec = spec.clone();
            spares.spawn(async move {
                let key = SpareKey::of(&spec);
                let spare = match inner.assemble_spare(&spec).await {
                    Ok(spare) => Some(spare),
                    Err(why) => {
                        tracing::warn!(environment = %spec.environment, reason = %why, "could not assemble a spare sandbox");
                        None
                    }
                };
                if let Some(spares) = &inner.spares {
                    spares.put(&spec.environment, &key, spare);
                }
            });
        }
    }

    /// Assembles one spare sandbox for `spec`'s environment: everything up to the payload,
    /// then waits until its init says it waits for a claim.
    async fn assemble_spare(self: &Arc<Self>, spec: &InstanceSpec) -> Result<Spare, String> {
        let (Some(sandbox), Some(spares)) = (&self.sandbox, &self.spares) else {
            return Err("no sandbox".to_owned());
        };
        let runtime = self
            .runtimes
            .resolve(&spec.image, spec.command.as_deref())
            .map_err(|e| e.to_string())?;
        let name = spares.next_name();
        let user = sandbox.next_user();
        let dir = self.instances_dir.join(&name);
        make_instance_dir(&dir, Some(user))
            .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
        let cgroup = self.cgroups.create(&name, &spec.limits);
        let (userfunc, work) = (dir.join("userfunc"), dir.join("work"));
        let secrets = dir.join(ConfigKind::Secret.dir_name());
        let configs = dir.join(ConfigKind::ConfigMap.dir_name());
        let dirs = InstanceDirs {
            userfunc: &userfunc,
            work: &work,
            secrets: &secrets,
            configs: &configs,
        };
        let socket = sandbox.socket_path(self.next_socket.fetch_add(1, Ordering::Relaxed));
        // The payload's variables come with the claim.
        let mut sandbox_spec = sandbox.instance_spec(
            &runtime,
            dirs,
            Vec::new(),
            cgroup.procs_files(),
            socket.clone(),
            user,
        );
        sandbox_spec.claim = true;
        sandbox_spec.waiter_env = vec![(INSTANCE_ID_VAR.to_owned(), name.clone())];
        // The payload is forked ahead from the environment's template (design note 012): a
        // spare is only worth keeping for starts that fork from it.
        let template = match &self.zygotes {
            Some(zygotes) => zygotes.socket_for(spec, &runtime).await,
            None => None,
        };
        let Some(template) = template else {
            return Err("its environment's instances do not start from a template".to_owned());
        };
        let launched = async {
            let (platform_end, init_end) = std::os::unix::net::UnixStream::pair()?;
            platform_end.set_nonblocking(true)?;
            let control = tokio::net::UnixStream::from_std(platform_end)?;
            let mut command = sandbox.command(&sandbox_spec)?;
            command
                .env(INSTANCE_ID_VAR, &name)
                .current_dir(&work)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(init_end)))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let child = self.spawner.spawn(command).await?;
            Ok::<_, io::Error>((child, control))
        }
        .await;
        let (child, control) = match launched {
            Ok(launched) => launched,
            Err(e) => {
                cgroup.remove().await;
                remove_dir_logged(&dir).await;
                return Err(format!("cannot start its sandbox: {e}"));
            }
        };
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_default();
        let mut spare = Spare {
            name,
            dir,
            user,
            cgroup,
            socket,
            child,
            pid,
            control,
            egress: None,
            template,
            since: Instant::now(),
        };
        let ready = async {
            if spec.egress && sandbox.egress_available() {
                let marker = (INSTANCE_ID_VAR, spare.name.as_str());
                spare.egress = sandbox
                    .start_egress(u32::try_from(pid).unwrap_or_default(), marker)
                    .await?;
            }
            let mut said = [0u8; kappa_sandbox::claim::READY.len()];
            spare
                .control
                .read_exact(&mut said)
                .await
                .map_err(|e| format!("its init ended before it was ready: {e}"))?;
            if said != kappa_sandbox::claim::READY {
                return Err("its init said something else than ready".to_owned());
            }
            // The payload forked ahead: the template's waiter migrates into the spare's
            // cgroups and joins its namespaces, the payload isolates itself and waits.
            let conn = kappa_sandbox::claim::connect_template(&spare.template)
                .map_err(|e| format!("the template could not be reached: {e}"))?;
            let prefork = kappa_sandbox::claim::Claim {
                env: Vec::new(),
                prefork: true,
            };
            use std::os::fd::AsFd;
            kappa_sandbox::claim::send(spare.control.as_fd(), &prefork, Some(conn.as_fd()))
                .map_err(|e| format!("its init could not be asked to fork ahead: {e}"))?;
            drop(conn);
            let mut said = [0u8; kappa_sandbox::claim::FORKED.len()];
            spare
                .control
                .read_exact(&mut said)
                .await
                .map_err(|e| format!("its payload could not be forked ahead: {e}"))?;
            if said != kappa_sandbox::claim::FORKED {
                return Err("its init said something else than forked".to_owned());
            }
            Ok(())
        };
        match tokio::time::timeout(self.start_timeout, ready).await {
            Ok(Ok(())) => {
                spare.since = Instant::now();
                Ok(spare)
            }
            Ok(Err(why)) => {
                spare.discard("it could not be assembled").await;
                Err(why)
            }
            Err(_) => {
                spare.discard("it could not be assembled").await;
                Err(format!("it was not ready within {:?}", self.start_timeout))
            }
        }
    }

    /// Hands `spare` to the instance `spec`: a connection to the template, the instance's
    /// variables, and its directory under the instance's id. `Err` (the spare dropped) when
    /// any step fails; the start then assembles a sandbox of its own.
    async fn claim_spare(
        &self,
        spec: &InstanceSpec,
        runtime: &ResolvedRuntime,
        mut spare: Spare,
    ) -> Result<Spare, String> {
        let template = match &self.zygotes {
            Some(zygotes) => zygotes.socket_for(spec, runtime).await,
            None => None,
        };
        let Some(template) = template else {
            self.drop_spare(spare, "this start does not use the template");
            return Err("this start does not use the template".to_owned());
        };
        // Its payload is a fork of the template that served it: a template that ended or was
        // replaced since takes its spares with it.
        if template != spare.template {
            self.drop_spare(spare, "its template ended or was replaced");
            return Err("its template ended or was replaced".to_owned());
        }
        let target = self.instances_dir.join(&spec.id);
        let moved = place::remove_tree(&target).and_then(|()| std::fs::rename(&spare.dir, &target));
        if let Err(e) = moved {
            self.drop_spare(spare, "its directory could not be renamed");
            return Err(format!(
                "cannot rename its directory to {}: {e}",
                target.display()
            ));
        }
        spare.dir = target;
        let env = Self::runtime_env(
            spec,
            SANDBOX_PORT,
            Path::new(SANDBOX_SECRETS),
            Path::new(SANDBOX_CONFIGS),
            true,
        );
        let claim = kappa_sandbox::claim::Claim {
            env,
            prefork: false,
        };
        use std::os::fd::AsFd;
        if let Err(e) = kappa_sandbox::claim::send(spare.control.as_fd(), &claim, None) {
            self.drop_spare(spare, "its init could not be claimed");
            return Err(format!("its init could not be claimed: {e}"));
        }
        if let Some(spares) = &self.spares {
            spares.note_claimed();
        }
        Ok(spare)
    }

    /// Drops a spare that was taken but could not be claimed.
    fn drop_spare(&self, spare: Spare, why: &'static str) {
        if let Some(spares) = &self.spares {
            spares.discard(spare, why);
        }
    }

    async fn create_reserved(
        self: &Arc<Self>,
        spec: &InstanceSpec,
        guard: &mut StartGuard,
    ) -> Result<Instance, BackendError> {
        let runtime = self
            .runtimes
            .resolve(&spec.image, spec.command.as_deref())?;
        // Unsandboxed, instances share the host's network and reach its ports anyway.
        if self.sandbox.is_some() {
            hostports::check(&spec.host_ports)
                .await
                .map_err(BackendError::Start)?;
        }
        let log = self.logs.instance(&spec.environment.name, &spec.id);
        let spare = match &self.spares {
            Some(spares) if spares.enabled() => spares.take(spec),
            _ => None,
        };
        if let Some(spare) = spare {
            let name = spare.name.clone();
            match self.claim_spare(spec, &runtime, spare).await {
                Ok(spare) => {
                    let dir = spare.dir.clone();
                    guard.dir = Some(dir.clone());
                    guard.template = true;
                    let user = Some(spare.user);
                    return match self
                        .start_once(
                            spec,
                            &runtime,
                            SANDBOX_PORT,
                            user,
                            &dir,
                            &log,
                            guard,
                            Some(spare),
                        )
                        .await
                    {
                        Ok(instance) => {
                            guard.dir = None;
                            Ok(instance)
                        }
                        Err(failure) => {
                            guard.dir = None;
                            log.write(LogStream::Platform, &failure.error.to_string());
                            remove_dir_logged(&dir).await;
                            Err(failure.error)
                        }
                    };
                }
                Err(why) => {
                    tracing::info!(instance = %spec.id, spare = %name, reason = %why, "spare sandbox not used");
                }
            }
        }
        let dir = self.instances_dir.join(&spec.id);
        let user = self.sandbox.as_ref().map(Sandbox::next_user);
        make_instance_dir(&dir, user)
            .map_err(|e| BackendError::Io(format!("cannot prepare {}: {e}", dir.display())))?;
        guard.dir = Some(dir.clone());
        let mut attempt = 1;
        loop {
            // Sandboxed, the runtime has a network namespace of its own: its port is never
            // taken. Unsandboxed, it shares the host's loopback.
            let port = match user {
                Some(_) => SANDBOX_PORT,
                None => free_port()
                    .map_err(|e| BackendError::Io(format!("no free loopback port: {e}")))?,
            };
            match self
                .start_once(spec, &runtime, port, user, &dir, &log, guard, None)
                .await
            {
                Ok(instance) => {
                    guard.dir = None;
                    return Ok(instance);
                }
                Err(failure) if failure.port_taken && attempt < PORT_ATTEMPTS => {
                    tracing::info!(instance = %spec.id, port, attempt, "port was taken, retrying with another");
                    log.write(
                        LogStream::Platform,
                        &format!("port {port} was taken; retrying with another port"),
                    );
                    attempt += 1;
                }
                Err(failure) => {
                    guard.dir = None;
                    log.write(LogStream::Platform, &failure.error.to_string());
                    remove_dir_logged(&dir).await;
                    return Err(failure.error);
                }
            }
        }
    }

    /// The runtime's environment: the platform's defaults, the environment's variables, then
    /// what the platform relies on (set last, so they win).
    fn runtime_env(
        spec: &InstanceSpec,
        port: u16,
        secrets_dir: &Path,
        configs_dir: &Path,
        sandboxed: bool,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        if sandboxed {
            env.push(("HOME".into(), "/tmp".into()));
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend([
            ("PORT".into(), port.to_string()),
            ("RUNTIME_PORT".into(), port.to_string()),
            ("HOST".into(), "127.0.0.1".into()),
            ("KAPPA_CONCURRENCY".into(), spec.concurrency.to_string()),
            (
                SECRETS_DIR_VAR.into(),
                secrets_dir.to_string_lossy().into_owned(),
            ),
            (
                CONFIGS_DIR_VAR.into(),
                configs_dir.to_string_lossy().into_owned(),
            ),
            (INSTANCE_ID_VAR.into(), spec.id.clone()),
        ]);
        env
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_once(
        self: &Arc<Self>,
        spec: &InstanceSpec,
        runtime: &ResolvedRuntime,
        port: u16,
        user: Option<(u32, u32)>,
        dir: &Path,
        log: &InstanceLog,
        guard: &mut StartGuard,
        spare: Option<Spare>,
    ) -> Result<Instance, StartFailure> {
        let fail = |error: BackendError| StartFailure {
            error,
            port_taken: false,
        };
        let userfunc = dir.join("userfunc");
        let work = dir.join("work");
        let secrets = dir.join(ConfigKind::Secret.dir_name());
        let configs = dir.join(ConfigKind::ConfigMap.dir_name());
        let cgroup = match &spare {
            Some(spare) => spare.cgroup.clone(),
            None => self.cgroups.create(&spec.id, &spec.limits),
        };
        guard.cgroup = Some(cgroup.clone());
        // A spare sandbox was claimed: its monitor, namespaces, root and egress already exist.
        let (child, addr, socket, preset_egress, mark, spare_age) = match spare {
            Some(spare) => {
                guard.pid = Some(spare.pid);
                let addr = InstanceAddr::Sandbox {
                    connector: spare.socket.clone(),
                    port,
                };
                (
                    spare.child,
                    addr,
                    Some(spare.socket),
                    Some(spare.egress),
                    Some(spare.name),
                    Some(spare.since.elapsed()),
                )
            }
            None => {
                let dirs = InstanceDirs {
                    userfunc: &userfunc,
                    work: &work,
                    secrets: &secrets,
                    configs: &configs,
                };
                let (child, addr, socket) = self
                    .launch(spec, runtime, port, user, dirs, &cgroup, &work, guard)
                    .await?;
                (child, addr, socket, None, None, None)
            }
        };
        let mut child = child;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_default();
        guard.pid = Some(pid);
        // The runtime's first output (the built-in runtimes say they listen) polls `/healthz`
        // at once instead of after the next pause; readiness is still only `/healthz`.
        let output = Arc::new(Notify::new());
        if let Some(stdout) = child.stdout.take() {
            log.spawn_pump(
                NotifyOnRead {
                    inner: stdout,
                    notify: output.clone(),
                },
                LogStream::Stdout,
            );
        }
        let tail = Arc::new(Tail::default());
        let tee = child.stderr.take().map(|stderr| {
            let (to_log, from_tee) = tokio::io::duplex(LOG_PIPE_BYTES);
            log.spawn_pump(from_tee, LogStream::Stderr);
            tokio::spawn(tee_stderr(stderr, to_log, tail.clone()))
        });
        let sandboxed = user.is_some();
        let signals_via_launcher = sandboxed || runtime.via_shell();
        // Egress is set up while the runtime starts.
        let egress = async {
            if let Some(egress) = preset_egress {
                return Ok(egress);
            }
            match &self.sandbox {
                Some(sandbox) if spec.egress && sandbox.egress_available() => {
                    let marker = (INSTANCE_ID_VAR, spec.id.as_str());
                    sandbox
                        .start_egress(u32::try_from(pid).unwrap_or_default(), marker)
                        .await
                }
                _ => Ok(None),
            }
        };
        let health = async {
            let deadline = Instant::now() + self.start_timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Err(Some(status)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(instance = %spec.id, error = %e, "cannot poll the instance process");
                    }
                }
                if http::healthy(&addr, HEALTH_CALL_TIMEOUT).await {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(None);
                }
                tokio::select! {
                    () = tokio::time::sleep(HEALTH_POLL) => {}
                    () = output.notified() => {}
                }
            }
        };
        let (outcome, egress) = tokio::join!(health, egress);
        let egress = match egress {
            Ok(egress) => egress,
            Err(why) => {
                let line = format!("no network egress for this instance: {why}");
                log.write(LogStream::Platform, &line);
                tracing::warn!(instance = %spec.id, reason = %why, "no network egress for the instance");
                None
            }
        };
        let closed = self.closed.load(Ordering::SeqCst);
        if outcome.is_err() || closed {
            let status = match outcome {
                Err(Some(status)) => Some(status),
                _ => {
                    procs::signal_tree(pid, Signal::SIGKILL, false);
                    let _ = child.wait().await;
                    None
                }
            };
            // Reaped: its pid may be reused from now on, so it must never be signalled again.
            guard.pid = None;
            if let Some(tee) = tee {
                let _ = tokio::time::timeout(STDERR_DRAIN, tee).await;
            }
            let oom = cgroup.oom_kills() > 0;
            guard.clear_attempt();
            cgroup.remove().await;
            let stderr = tail.last_lines(STDERR_TAIL_LINES);
            let port_taken = !sandboxed && (mentions_addr_in_use(&stderr) || !port_is_free(port));
            let stderr_note = if stderr.is_empty() {
                "it wrote nothing to stderr (its stdout is in the instance's log)".to_owned()
            } else {
                format!("last lines of its stderr:\n{stderr}")
            };
            let listening = match &addr {
                InstanceAddr::Sandbox { port, .. } => format!("port {port} inside its sandbox"),
                InstanceAddr::Tcp(addr) => addr.to_string(),
            };
            let error = match (status, closed) {
                (_, true) => BackendError::Start("the local backend is shutting down".into()),
                (Some(status), _) => BackendError::Start(format!(
                    "runtime {} of instance {} {} before it became healthy; {stderr_note}",
                    runtime.name(),
                    spec.id,
                    exit_reason(status, signals_via_launcher, oom)
                )),
                (None, _) => BackendError::Start(format!(
                    "runtime {} of instance {} did not answer GET /healthz on {listening} within {:?}; {stderr_note}",
                    runtime.name(),
                    spec.id,
                    self.start_timeout
                )),
            };
            return Err(StartFailure { error, port_taken });
        }

        // The exit task owns the instance from here on.
        guard.clear_attempt();
        let instance = Instance {
            id: spec.id.clone(),
            addr: addr.clone(),
            labels: spec.labels.clone(),
        };
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let record = InstanceRecord {
            id: spec.id.clone(),
            pid,
            pgid: pid,
            port,
            cgroup: cgroup.clone(),
            started_at,
            labels: spec.labels.clone(),
            mark,
        };
        let (done_tx, done) = watch::channel(false);
        let live = Arc::new(Live {
            instance: instance.clone(),
            pid,
            dir: dir.to_path_buf(),
            cgroup,
            log: log.clone(),
            sandboxed,
            user,
            socket,
            egress: Mutex::new(egress),
            host_ports: HostPorts::default(),
            record,
            deleting: AtomicBool::new(false),
            done,
            opened: Mutex::new(Opened::default()),
        });
        self.live().insert(spec.id.clone(), live.clone());
        self.save_state();
        log.write(
            LogStream::Platform,
            &format!(
                "instance {} started{}: runtime {} on {addr} (pid {pid}, {}, egress {}, cgroups {})",
                spec.id,
                spare_age.map_or_else(String::new, |age| format!(
                    " from a spare sandbox (ready {} ms before)",
                    age.as_millis()
                )),
                runtime.name(),
                match user {
                    Some((uid, _)) => format!("sandboxed as uid {uid}"),
                    None => "UNSANDBOXED".to_owned(),
                },
                if live
                    .egress
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()
                {
                    "on"
                } else {
                    "off"
                },
                self.cgroups
                    .version()
                    .map_or("none".to_owned(), |v| v.to_string()),
            ),
        );
        tracing::info!(instance = %spec.id, environment = %spec.environment, %addr, pid, spare = spare_age.is_some(), "instance started");
        tokio::spawn(watch_exit(
            Arc::downgrade(self),
            live.clone(),
            child,
            done_tx,
            signals_via_launcher,
        ));
        if let Some(socket) = &live.socket
            && !spec.host_ports.is_empty()
        {
            if let Err(why) = live.host_ports.set(&spec.host_ports, socket, log).await {
                let _ = self.delete(&spec.id, Duration::ZERO).await;
                return Err(fail(BackendError::Start(why)));
            }
            log.write(
                LogStream::Platform,
                &format!("host ports relayed: {:?}", live.host_ports.ports()),
            );
        }
        Ok(instance)
    }

    /// Starts a new sandbox (or unsandboxed process) for one start attempt.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        spec: &InstanceSpec,
        runtime: &ResolvedRuntime,
        port: u16,
        user: Option<(u32, u32)>,
        dirs: InstanceDirs<'_>,
        cgroup: &InstanceCgroup,
        work: &Path,
        guard: &mut StartGuard,
    ) -> Result<(Child, InstanceAddr, Option<PathBuf>), StartFailure> {
        let fail = |error: BackendError| StartFailure {
            error,
            port_taken: false,
        };
        let launch = match (&self.sandbox, user) {
            (Some(sandbox), Some(user)) => {
                let socket = sandbox.socket_path(self.next_socket.fetch_add(1, Ordering::Relaxed));
                let env = Self::runtime_env(
                    spec,
                    port,
                    Path::new(SANDBOX_SECRETS),
                    Path::new(SANDBOX_CONFIGS),
                    true,
                );
                let mut sandbox_spec = sandbox.instance_spec(
                    runtime,
                    dirs,
                    env,
                    cgroup.procs_files(),
                    socket.clone(),
                    user,
                );
                if let Some(zygotes) = &self.zygotes {
                    sandbox_spec.zygote = zygotes.socket_for(spec, runtime).await;
                    guard.template = sandbox_spec.zygote.is_some();
                }
                sandbox_spec.waiter_env = vec![(INSTANCE_ID_VAR.to_owned(), spec.id.clone())];
                sandbox.command(&sandbox_spec).map(|command| {
                    let addr = InstanceAddr::Sandbox {
                        connector: socket.clone(),
                        port,
                    };
                    (command, addr, Some(socket))
                })
            }
            _ => {
                // Where the function finds its secrets and config maps: without a sandbox the
                // Fission paths cannot exist, so the instance's own dirs.
                let env = Self::runtime_env(spec, port, dirs.secrets, dirs.configs, false);
                let chain = sandbox::launcher(
                    self.setpriv.as_deref(),
                    &cgroup.procs_files(),
                    runtime.argv(port, false),
                );
                let mut command = std::process::Command::new(&chain[0]);
                command.args(&chain[1..]).env_clear().envs(env);
                let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                Ok((command, InstanceAddr::Tcp(addr), None))
            }
        };
        let (mut command, addr, socket) = match launch {
            Ok(launch) => launch,
            Err(e) => {
                guard.clear_attempt();
                cgroup.remove().await;
                return Err(fail(BackendError::Start(format!(
                    "cannot prepare the sandbox: {e}"
                ))));
            }
        };
        let program = PathBuf::from(command.get_program());
        command
            // The sandbox's helper processes carry the mark too, so a later start finds them.
            .env(INSTANCE_ID_VAR, &spec.id)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = match self.spawner.spawn(command).await {
            Ok(child) => child,
            Err(e) => {
                guard.clear_attempt();
                cgroup.remove().await;
                return Err(fail(BackendError::Start(format!(
                    "cannot run {}: {e}",
                    program.display()
                ))));
            }
        };
        Ok((child, addr, socket))
    }

    /// Opens the connections a specialization and its first request use (see [`Opened`]).
    async fn prepare(&self, instance: &Instance) {
        let Some(live) = self.live().get(&instance.id).cloned() else {
            return;
        };
        let connect = || {
            tokio::time::timeout(
                PREPARE_TIMEOUT,
                kappa_sandbox::connector::connect(&instance.addr),
            )
        };
        let (control, first) = tokio::join!(connect(), connect());
        let mut opened = live.opened.lock().unwrap_or_else(PoisonError::into_inner);
        opened.control = control.ok().and_then(Result::ok);
        opened.first = first.ok().and_then(Result::ok);
    }

    async fn specialize(
        &self,
        instance: &Instance,
        request: &SpecializeRequest,
    ) -> Result<(), BackendError> {
        let live = self
            .live()
            .get(&instance.id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(instance.id.clone()))?;
        // Spans measured by their lifetime (docs/observability.md).
        let place_span = if kappa_telemetry::enabled() {
            kappa_telemetry::span!("place code", kappa.instance.id = %instance.id)
        } else {
            tracing::Span::none()
        };
        // A single file placed by an earlier specialization is checked here; anything else
        // (a first use, a zip) on a blocking thread.
        let cached = self
            .archives
            .cached_file(&request.archive_sha256, request.filename.as_deref());
        let extracted = match cached {
            Some(file) => Extracted::File(file),
            None => self
                .archives
                .extracted(&request.archive_sha256, request.filename.as_deref())
                .await
                .map_err(|e| {
                    BackendError::Code(format!("archive {}: {e}", request.archive_sha256))
                })?,
        };
        let userfunc = live.dir.join("userfunc");
        let placed = match extracted {
            // One file is a few system calls (a stat and a hard link): placed here, it saves a
            // hand-off to a blocking thread and back on the specialization's path (and the
            // start of that thread when the pool's threads have timed out).
            Extracted::File(source) => {
                let name = source
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                place::place_file(&source, name, &userfunc)
            }
            // A tree costs one link per file: on a blocking thread.
            Extracted::Dir(source) => {
                let target = userfunc.clone();
                tokio::task::spawn_blocking(move || place::place_dir(&source, &target))
                    .await
                    .map_err(|e| BackendError::Code(format!("placing the code failed: {e}")))?
            }
        }
        .map_err(|e| {
            BackendError::Code(format!("placing the code into {}: {e}", userfunc.display()))
        })?;
        if !request.files.is_empty() {
            let dir = live.dir.clone();
            let volumes = request.files.clone();
            let owner = live.user;
            tokio::task::spawn_blocking(move || {
                for volume in &volumes {
                    let base = dir.join(volume.kind.dir_name());
                    place::place_config(&base, volume, owner).map_err(|e| {
                        BackendError::Code(format!(
                            "placing {} {}/{} failed: {e}",
                            volume.kind, volume.namespace, volume.name
                        ))
                    })?;
                }
                Ok::<(), BackendError>(())
            })
            .await
            .map_err(|e| {
                BackendError::Code(format!("placing secrets and config maps failed: {e}"))
            })??;
        }
        drop(place_span);
        if !request.egress {
            // A function without egress on an instance that had it: its user-mode networking
            // ends (and `tap0` with it) before any of the function's code runs.
            if live.end_egress().await {
                live.log.write(
                    LogStream::Platform,
                    "network egress switched off for this function",
                );
            }
        }
        let filepath = if live.sandboxed {
            Path::new(SANDBOX_USERFUNC).join(&placed)
        } else {
            userfunc.join(&placed)
        };
        let body = SpecializeBody::new(&filepath, &request.entrypoint, &request.env);
        let body = serde_json::to_vec(&body).map_err(|e| BackendError::Io(e.to_string()))?;
        // From now on the instance's lines (and the runtime's own report of a failure) belong
        // to the function, so `kappa fn logs` shows why a specialization failed. The log file
        // is moved with every line it already has, so the move (a few file system calls) is
        // made once the specialize request is sent, while the runtime loads the code; on a
        // path that ends before that, here.
        let assign = || {
            live.log
                .assign(&request.function.namespace, &request.function.name);
        };
        // The function's host ports replace the instance's before its code is loaded.
        if let Some(socket) = &live.socket {
            let before = live.host_ports.ports();
            if let Err(why) = live
                .host_ports
                .set(&request.host_ports, socket, &live.log)
                .await
            {
                assign();
                live.log.write(LogStream::Platform, &why);
                return Err(BackendError::Specialize {
                    status: None,
                    message: why,
                    detail: None,
                });
            }
            let after = live.host_ports.ports();
            if after != before {
                live.log.write(
                    LogStream::Platform,
                    &format!("host ports relayed for this function: {after:?}"),
                );
            }
        }
        let _runtime_span = if kappa_telemetry::enabled() {
            kappa_telemetry::span!("runtime specialize", kappa.instance.id = %instance.id)
        } else {
            tracing::Span::none()
        };
        let control = live
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .control
            .take()
            .filter(still_open);
        let call = http::call_on(
            control,
            &instance.addr,
            ::http::Method::POST,
            SPECIALIZE_PATH,
            Some(("application/json", body)),
        );
        let mut call = std::pin::pin!(tokio::time::timeout(request.timeout, call));
        // The first poll writes the request (its connection is driven by this task).
        let sent = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assign();
        let outcome = match sent {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => call.await,
        };
        let response = match outcome {
            Err(_) => {
                let message = format!(
                    "specializing instance {} for function {} did not finish within {:?}",
                    instance.id, request.function, request.timeout
                );
                live.log.write(LogStream::Platform, &message);
                return Err(BackendError::Timeout(message));
            }
            Ok(Err(e)) => {
                let message = format!(
                    "could not reach the runtime of instance {}: {e}",
                    instance.id
                );
                live.log.write(LogStream::Platform, &message);
                return Err(BackendError::Specialize {
                    status: None,
                    message,
                    detail: None,
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.status.is_success() {
            live.log.write(
                LogStream::Platform,
                &format!(
                    "specialized for function {} (generation {})",
                    request.function, request.generation
                ),
            );
            tracing::info!(instance = %instance.id, function = %request.function, "instance specialized");
            return Ok(());
        }
        let (message, detail) = runtime_error(response.status.as_u16(), &response.body);
        let mut line = format!(
            "specialization for function {} failed ({}): {message}",
            request.function, response.status
        );
        if let Some(detail) = &detail {
            line.push('\n');
            line.push_str(detail);
        }
        live.log.write(LogStream::Platform, &line);
        Err(BackendError::Specialize {
            status: Some(response.status.as_u16()),
            message,
            detail,
        })
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        let live = self
            .live()
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(id.to_owned()))?;
        live.deleting.store(true, Ordering::SeqCst);
        let mut done = live.done.clone();
        if !grace.is_zero() {
            live.log.write(
                LogStream::Platform,
                &format!("stopping instance (grace {grace:?})"),
            );
            procs::signal_tree(live.pid, Signal::SIGTERM, live.sandboxed);
            if tokio::time::timeout(grace, done.wait_for(|d| *d))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        live.log.write(LogStream::Platform, "killing instance");
        procs::signal_tree(live.pid, Signal::SIGKILL, false);
        for dir in &live.cgroup.dirs {
            for pid in crate::cgroup::tasks(dir) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        match tokio::time::timeout(KILL_WAIT, done.wait_for(|d| *d)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(BackendError::Timeout(format!(
                "instance {id} did not exit within {KILL_WAIT:?} of SIGKILL"
            ))),
        }
    }
}

impl Live {
    /// Ends the instance's user-mode networking, if it has any; whether it had.
    async fn end_egress(&self) -> bool {
        let egress = self
            .egress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut egress) = egress else {
            return false;
        };
        let _ = egress.start_kill();
        let _ = egress.wait().await;
        true
    }
}

/// Waits for an instance's process, then records why it ended, cleans up and tells subscribers.
async fn watch_exit(
    inner: Weak<Inner>,
    live: Arc<Live>,
    mut child: Child,
    done: watch::Sender<bool>,
    signals_via_launcher: bool,
) {
    let id = live.instance.id.clone();
    let reason = match child.wait().await {
        Ok(status) => exit_reason(status, signals_via_launcher, live.cgroup.oom_kills() > 0),
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "cannot wait for the instance process");
            ExitReason {
                oom_killed: live.cgroup.oom_kills() > 0,
                ..ExitReason::default()
            }
        }
    };
    // Whatever is left of the instance's process group (the group id cannot be reused while
    // any member lives).
    let _ = killpg(Pid::from_raw(live.pid), Signal::SIGKILL);
    live.end_egress().await;
    live.host_ports.close_all();
    if let Some(socket) = &live.socket {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(inner) = inner.upgrade() {
        inner.live().remove(&id);
        inner.save_state();
    }
    let deliberate = live.deleting.load(Ordering::SeqCst);
    let line = if deliberate {
        format!("instance stopped: {reason}")
    } else {
        format!("instance {reason}")
    };
    live.log.write(LogStream::Platform, &line);
    if deliberate {
        tracing::info!(instance = %id, %reason, "instance stopped");
    } else {
        tracing::warn!(instance = %id, %reason, "instance exited");
    }
    live.cgroup.remove().await;
    remove_dir_logged(&live.dir).await;
    if let Some(inner) = inner.upgrade() {
        // No subscriber is fine.
        let _ = inner.events.send(InstanceEvent::Exited { id, reason });
    }
    let _ = done.send(true);
}

/// Why a process ended. A launcher (the sandbox's init, a shell) reports a child killed by signal N as
/// exit code 128+N; a direct child shows the signal itself.
fn exit_reason(status: ExitStatus, signals_via_launcher: bool, oom_killed: bool) -> ExitReason {
    if let Some(signal) = status.signal() {
        return ExitReason {
            code: None,
            signal: Some(signal),
            oom_killed,
        };
    }
    match status.code() {
        Some(code) if signals_via_launcher && (129..=128 + 64).contains(&code) => ExitReason {
            code: None,
            signal: Some(code - 128),
            oom_killed,
        },
        code => ExitReason {
            code,
            signal: None,
            oom_killed,
        },
    }
}

/// Copies an instance's stderr to its log while keeping the last bytes to explain an early
/// exit.
async fn tee_stderr(mut stderr: ChildStderr, mut to_log: tokio::io::DuplexStream, tail: Arc<Tail>) {
    let mut buf = vec![0u8; 8192];
    let mut log_open = true;
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        tail.push(chunk);
        if log_open && to_log.write_all(chunk).await.is_err() {
            // The pump is gone; keep draining so the instance never blocks on stderr.
            log_open = false;
        }
    }
    let _ = to_log.shutdown().await;
}

/// A reader that wakes whoever waits on `notify` each time it reads something (an instance's
/// stdout on its way to the log, so the start's health poll runs when the runtime speaks).
struct NotifyOnRead<R> {
    inner: R,
    notify: Arc<Notify>,
}

impl<R: AsyncRead + Unpin> AsyncRead for NotifyOnRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.notify.notify_one();
        }
        poll
    }
}

/// The last bytes an instance wrote to stderr.
#[derive(Default)]
struct Tail {
    /// A std mutex: held for a copy of at most a few KiB.
    bytes: Mutex<VecDeque<u8>>,
}

impl Tail {
    fn push(&self, chunk: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend(chunk);
        let excess = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        bytes.drain(..excess);
    }

    fn last_lines(&self, n: usize) -> String {
        let bytes: Vec<u8> = self
            .bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The cleanup of one `create`: releases the id's reservation when dropped. If the `create`
/// future was dropped half-way (a caller's timeout, say), it first kills the process tree and
/// removes the cgroups and directory of the abandoned start, and releases the id only then, so
/// a new instance of the same id never races that cleanup. Every path that cleans up itself
/// clears the fields first.
struct StartGuard {
    inner: Arc<Inner>,
    id: String,
    pid: Option<i32>,
    cgroup: Option<InstanceCgroup>,
    dir: Option<PathBuf>,
    /// The start used the environment's template (then a spare sandbox is kept for the next).
    template: bool,
}

impl StartGuard {
    /// The current attempt's process and cgroups are taken care of.
    fn clear_attempt(&mut self) {
        self.pid = None;
        self.cgroup = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            procs::signal_tree(pid, Signal::SIGKILL, false);
        }
        let (cgroup, dir) = (self.cgroup.take(), self.dir.take());
        let (inner, id) = (self.inner.clone(), std::mem::take(&mut self.id));
        if cgroup.is_none() && dir.is_none() {
            inner.release(&id);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Some(cgroup) = cgroup {
                        cgroup.remove().await;
                    }
                    if let Some(dir) = dir {
                        remove_dir_logged(&dir).await;
                    }
                    inner.release(&id);
                });
            }
            Err(_) => {
                // The next backend start on this data directory cleans up instead.
                tracing::warn!(instance = %id, "an abandoned instance start could not be cleaned up");
                inner.release(&id);
            }
        }
    }
}

fn mentions_addr_in_use(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("address already in use")
        || lower.contains("eaddrinuse")
        || lower.contains("errno 98")
}

/// A port that was free a moment ago (bind `127.0.0.1:0`, read the port, close).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Instance ids name directories and cgroups: one safe path component.
fn check_id(id: &str) -> Result<(), BackendError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BackendError::Start(format!(
            "invalid instance id {id:?}: use 1 to {MAX_ID_LEN} ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// Creates `dir/{userfunc,work,secrets,configs}`, replacing leftovers of the same id.
///
/// Sandboxed (`user` set), the instance's user owns `work` (`0700`), `secrets` and `configs`
/// (`0500`: read and traverse); `userfunc` stays root's with the instance's group allowed to
/// add files (`01770`, sticky: nothing placed there by the platform can be removed, renamed or,
/// being root's and read-only, changed by the instance). Unsandboxed, everything is the
/// platform's own (`0755`, secrets `0700`, configs `0750`).
fn make_instance_dir(dir: &Path, user: Option<(u32, u32)>) -> io::Result<()> {
    use std::os::unix::fs::chown;
    place::remove_tree(dir)?;
    /// A directory of the instance: its name, mode and owner (uid, gid).
    type Sub<'a> = (&'a str, u32, Option<(u32, u32)>);
    let dirs: [Sub<'_>; 4] = match user {
        Some((uid, gid)) => [
            ("userfunc", 0o1770, Some((0, gid))),
            ("work", 0o700, Some((uid, gid))),
            (ConfigKind::Secret.dir_name(), 0o500, Some((uid, gid))),
            (ConfigKind::ConfigMap.dir_name(), 0o500, Some((uid, gid))),
        ],
        None => [
            ("userfunc", 0o755, None),
            ("work", 0o755, None),
            (ConfigKind::Secret.dir_name(), 0o700, None),
            (ConfigKind::ConfigMap.dir_name(), 0o750, None),
        ],
    };
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    for (sub, mode, owner) in dirs {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)?;
        if let Some((uid, gid)) = owner {
            chown(&path, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

async fn remove_dir_logged(dir: &Path) {
    let path = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || place::remove_tree(&path)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the instance directory")
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "instance directory removal task failed")
        }
    }
}

/// Ends whatever an earlier run left in `data_dir`: processes of the instances in its state
/// file or with a directory under `instances/` (only processes carrying their instance id, so a
/// recycled pid is never hit), their cgroups and directories. Leaves an empty state file.
async fn recover(data_dir: &Path, instances_dir: &Path) -> Result<(), BackendError> {
    let records = state::read(data_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring an unreadable instance state file");
        Vec::new()
    });
    let mut ids: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    // Instances started from a spare sandbox carry the spare's mark.
    ids.extend(records.iter().filter_map(|r| r.mark.clone()));
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(instances_dir) {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                ids.insert(name.to_owned());
            }
            dirs.push(entry.path());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    for record in &records {
        if procs::is_instance_process(record.pgid, record.mark.as_deref().unwrap_or(&record.id)) {
            let _ = killpg(Pid::from_raw(record.pgid), Signal::SIGKILL);
        }
    }
    let killed = procs::kill_marked(&ids);
    for record in &records {
        record.cgroup.remove().await;
    }
    for dir in &dirs {
        remove_dir_logged(dir).await;
    }
    state::write(data_dir, Vec::new()).map_err(|e| {
        BackendError::Io(format!(
            "cannot reset the instance state file in {}: {e}",
            data_dir.display()
        ))
    })?;
    tracing::info!(
        instances = ids.len(),
        processes_killed = killed,
        "cleaned up the instances of an earlier run"
    );
    Ok(())
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Starts instance processes from one long-lived thread.
///
/// `PR_SET_PDEATHSIG` (the sandbox monitor's, setpriv's) fires when the *thread* that
/// forked the child exits, not the process. Spawning from whichever runtime thread happens to
/// run `create` would kill an instance when, say, a blocking-pool thread retires. This thread
/// lives exactly as long as the backend: dropping the backend ends it, which ends its instances.
struct Spawner {
    jobs: std::sync::mpsc::SyncSender<SpawnJob>,
}

impl Spawner {
    fn new(handle: tokio::runtime::Handle) -> io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<SpawnJob>(SPAWN_QUEUE);
        std::thread::Builder::new()
            .name("kappa-local-spawner".into())
            .spawn(move || {
                // tokio's child handling (SIGCHLD) registers with the runtime's drivers.
                let _guard = handle.enter();
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    async fn spawn(&self, command: std::process::Command) -> io::Result<Child> {
        let (tx, rx) = oneshot::channel();
        let job: SpawnJob = Box::new(move || {
            let _ = tx.send(tokio::process::Command::from(command).spawn());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                io::Error::other("too many instance starts at once")
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                io::Error::other("the spawner thread is gone")
            }
        })?;
        rx.await
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_from_launchers_and_direct_children() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let signal = |s: i32| ExitStatus::from_raw(s);
        assert_eq!(
            exit_reason(code(3), true, false),
            ExitReason {
                code: Some(3),
                signal: None,
                oom_killed: false
            }
        );
        assert_eq!(
            exit_reason(code(137), true, true),
            ExitReason {
                code: None,
                signal: Some(9),
                oom_killed: true
            }
        );
        assert_eq!(exit_reason(code(137), false, false).code, Some(137));
        assert_eq!(exit_reason(signal(15), false, false).signal, Some(15));
    }

    #[test]
    fn ids_are_safe_path_components() {
        assert!(check_id("pool-python-1a2b").is_ok());
        assert!(check_id("a.b_c").is_ok());
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let last = tail.last_lines(2);
        assert_eq!(last, "line 998\nline 999");
    }

    #[test]
    fn addr_in_use_is_recognised() {
        assert!(mentions_addr_in_use(
            "OSError: [Errno 98] Address already in use"
        ));
        assert!(!mentions_addr_in_use("ImportError"));
    }
}
