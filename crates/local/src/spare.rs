//! Spare sandboxes (`docs/design/011-spare-sandboxes.md`): for each environment whose instances
//! are forked from its template, a few sandboxes assembled ahead of time, off the request path,
//! each waiting in its init for a claim.
//!
//! A spare has everything an instance's sandbox has before its payload exists: the instance
//! directory (`instances/.spare-<run>-<n>`, a name no instance id can take), cgroups with the
//! environment's limits, the monitor in them, the namespaces, the root file system, egress, a
//! user of its own. A start whose spec matches the spare's [`SpareKey`] takes it: the backend
//! renames the directory to the instance's, sends the claim (the instance's variables and a
//! connection to the template) and waits for `/healthz` as for any start. This module keeps the
//! spares; the backend assembles and claims them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kappa_core::{FunctionId, InstanceSpec, Limits};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cgroup::InstanceCgroup;
use crate::procs;

/// How long after a template start its replacement spare is assembled at the latest when the
/// instance is not specialized before (a pool's instance).
pub(crate) const REPLENISH_DELAY: Duration = Duration::from_secs(1);

/// Everything a sandbox depends on besides the instance's identity: a start whose spec has the
/// same key can take a spare assembled for another. (The instance's id, labels, variables and
/// concurrency reach the payload with the claim; its host ports are relayed after the start;
/// its user, directory, cgroups and connector are the spare's own.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpareKey {
    env_generation: i64,
    image: String,
    command: Option<String>,
    limits: Limits,
    egress: bool,
    zygote: Option<bool>,
}

impl SpareKey {
    pub(crate) fn of(spec: &InstanceSpec) -> Self {
        Self {
            env_generation: spec.env_generation,
            image: spec.image.clone(),
            command: spec.command.clone(),
            limits: spec.limits,
            egress: spec.egress,
            zygote: spec.zygote,
        }
    }
}

/// One assembled sandbox waiting for a claim.
#[derive(Debug)]
pub(crate) struct Spare {
    /// `.spare-<run>-<n>`: its directory's name and its processes' mark (`KAPPA_INSTANCE_ID`).
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) user: (u32, u32),
    pub(crate) cgroup: InstanceCgroup,
    /// The connector's socket.
    pub(crate) socket: PathBuf,
    /// The monitor (leader of its own process group).
    pub(crate) child: Child,
    pub(crate) pid: i32,
    /// The platform's end of the init's stdin, where the claim is sent.
    pub(crate) control: tokio::net::UnixStream,
    /// Its user-mode networking, when the environment has egress.
    pub(crate) egress: Option<Child>,
    /// The control socket of the template its payload was forked from (a new template, after
    /// an end or an update, has another).
    pub(crate) template: PathBuf,
    /// When it became ready.
    pub(crate) since: Instant,
}

impl Spare {
    /// Whether its sandbox ended or is ending (then it is discarded, never handed out). A
    /// killed monitor is a zombie that `waitpid` does not report until its last thread is
    /// gone, so its state in `/proc` counts too.
    pub(crate) fn ended(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .and_then(|rest| rest.split_whitespace().next());
        !matches!(state, Some(s) if s != "Z" && s != "X")
    }

    /// Kills its processes and removes its connector socket, cgroups and directory.
    pub(crate) async fn discard(mut self, why: &str) {
        tracing::info!(spare = %self.name, pid = self.pid, reason = why, "spare sandbox dropped");
        procs::signal_tree(self.pid, Signal::SIGKILL, false);
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.child.wait().await;
        if let Some(mut egress) = self.egress.take() {
            let _ = egress.start_kill();
            let _ = egress.wait().await;
        }
        let _ = std::fs::remove_file(&self.socket);
        self.cgroup.remove().await;
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || kappa_runtime::place::remove_tree(&dir)).await;
    }
}

/// This process's id and the clock's nanoseconds (two backends of one process differ by the
/// latter).
fn run_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:05x}", std::process::id(), nanos & 0xf_ffff)
}

/// How many spares there are and what became of them (diagnostics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpareStats {
    /// Ready now, over all environments.
    pub ready: usize,
    /// Being assembled now.
    pub assembling: usize,
    /// Assembled and ready since the backend started.
    pub assembled: u64,
    /// Taken by a start since the backend started.
    pub claimed: u64,
    /// Dropped unused (environment removed or updated, sandbox ended, shutdown).
    pub discarded: u64,
}

/// The spares of one environment.
#[derive(Debug)]
struct EnvSpares {
    key: SpareKey,
    ready: Vec<Spare>,
    /// Assemblies under way for `key`.
    assembling: usize,
}

/// The spares of one backend.
#[derive(Debug)]
pub(crate) struct Spares {
    /// Spares kept per environment (0: none).
    per_env: usize,
    /// This backend's part of its spares' names.
    run: String,
    envs: Mutex<HashMap<FunctionId, EnvSpares>>,
    next: AtomicU64,
    assembled: AtomicU64,
    claimed: AtomicU64,
    discarded: AtomicU64,
    /// Instances whose start should be followed by a spare once they are specialized (the
    /// first request's path is then almost done) or after [`REPLENISH_DELAY`].
    pending: Mutex<HashMap<String, Arc<Notify>>>,
    /// The assemblies under way (awaited at shutdown, so no cgroup is left behind).
    tasks: Mutex<JoinSet<()>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Spares {
    pub(crate) fn new(per_env: usize) -> Self {
        Self {
            per_env,
            run: run_name(),
            envs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            assembled: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_env > 0 && !self.closed.load(Ordering::SeqCst)
    }

    fn envs(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionId, EnvSpares>> {
        self.envs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A name for one more spare: `.spare-<run>-<n>`, with `run` drawn once per backend, so
    /// that another platform's spares (on the same machine, or the one a crash left) never
    /// carry the same mark and recovery never ends them by mistake.
    pub(crate) fn next_name(&self) -> String {
        format!(
            ".spare-{}-{}",
            self.run,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Takes a live spare matching `spec`, if there is one; spares found ended are discarded.
    pub(crate) fn take(&self, spec: &InstanceSpec) -> Option<Spare> {
        let key = SpareKey::of(spec);
        let mut dead = Vec::new();
        let found = {
            let mut envs = self.envs();
            let env = envs.get_mut(&spec.environment)?;
            if env.key != key {
                None
            } else {
                let mut found = None;
                while let Some(mut spare) = env.ready.pop() {
                    if spare.ended() {
                        dead.push(spare);
                        continue;
                    }
                    found = Some(spare);
                    break;
                }
                found
            }
        };
        for spare in dead {
            self.discard(spare, "its sandbox ended before it was claimed");
        }
        found
    }

    /// Whether one more spare should be assembled for `spec`'s environment and key; if so, it
    /// is counted as under way (the caller assembles it and calls [`Spares::put`]). Spares of
    /// an older key (the environment was updated) are dropped.
    pub(crate) fn reserve(&self, spec: &InstanceSpec) -> bool {
        if !self.enabled() {
            return false;
        }
        let key = SpareKey::of(spec);
        let mut stale: Vec<(Spare, &'static str)> = Vec::new();
        let reserve = {
            let mut envs = self.envs();
            let env = envs
                .entry(spec.environment.clone())
                .or_insert_with(|| EnvSpares {
                    key: key.clone(),
                    ready: Vec::new(),
                    assembling: 0,
                });
            if env.key != key {
                stale.extend(env.ready.drain(..).map(|s| (s, "the environment changed")));
                env.key = key;
                env.assembling = 0;
            }
            // Spares found ended are replaced.
            let mut live = Vec::new();
            for mut spare in std::mem::take(&mut env.ready) {
                if spare.ended() {
                    stale.push((spare, "its sandbox ended before it was claimed"));
                } else {
                    live.push(spare);
                }
            }
            env.ready = live;
            let reserve = env.ready.len() + env.assembling < self.per_env;
            if reserve {
                env.assembling += 1;
            }
            reserve
        };
        for (spare, why) in stale {
            self.discard(spare, why);
        }
        reserve
    }

    /// Adds an assembled spare (or drops it when its environment was removed or changed, or
    /// the backend is closing); `None` ends a failed assembly.
    pub(crate) fn put(&self, environment: &FunctionId, key: &SpareKey, spare: Option<Spare>) {
        let rejected = {
            let mut envs = self.envs();
            match envs.get_mut(environment) {
                Some(env) if env.key == *key => {
                    env.assembling = env.assembling.saturating_sub(1);
                    match spare {
                        Some(spare) if !self.closed.load(Ordering::SeqCst) => {
                            self.assembled.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                environment = %environment,
                                spare = %spare.name,
                                pid = spare.pid,
                                "spare sandbox ready"
                            );
                            env.ready.push(spare);
                            None
                        }
                        other => other,
                    }
                }
                _ => spare,
            }
        };
        if let Some(spare) = rejected {
            self.discard(
                spare,
                "its environment changed, was removed, or the backend is closing",
            );
        }
    }

    /// Runs an assembly in the background (awaited at shutdown).
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Finished assemblies are collected as new ones start.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Registers the instance `id`, just started from the template: the returned notification
    /// fires when it is specialized ([`Spares::specialized`]).
    pub(crate) fn after_start(&self, id: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), notify.clone());
        notify
    }

    /// The instance `id` was specialized (or its wait is over).
    pub(crate) fn specialized(&self, id: &str) {
        let notify = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(notify) = notify {
            notify.notify_one();
        }
    }

    /// Counts a spare a start took and claimed.
    pub(crate) fn note_claimed(&self) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops a spare in the background (counted).
    pub(crate) fn discard(&self, spare: Spare, why: &'static str) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        self.spawn(spare.discard(why));
    }

    /// Drops the spares of a removed environment.
    pub(crate) fn remove_env(&self, environment: &FunctionId) {
        let removed = self.envs().remove(environment);
        for spare in removed.into_iter().flat_map(|env| env.ready) {
            self.discard(spare, "its environment was removed");
        }
    }

    /// Drops every spare and waits for the assemblies under way and the removals (shutdown).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<Spare> = self
            .envs()
            .values_mut()
            .flat_map(|env| std::mem::take(&mut env.ready))
            .collect();
        for spare in all {
            self.discard(spare, "the backend is shutting down");
        }
        // Assemblies finishing now drop their spare themselves (`put` after `closed`).
        loop {
            let mut tasks =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
            if tasks.is_empty() {
                break;
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    pub(crate) fn stats(&self) -> SpareStats {
        let envs = self.envs();
        SpareStats {
            ready: envs.values().map(|e| e.ready.len()).sum(),
            assembling: envs.values().map(|e| e.assembling).sum(),
            assembled: self.assembled.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    /// The monitors' pids of the ready spares (tests: a start that claims one keeps its pid).
    pub(crate) fn ready_pids(&self) -> Vec<i32> {
        self.envs()
            .values()
            .flat_map(|e| e.ready.iter().map(|s| s.pid))
            .collect()
    }
}
