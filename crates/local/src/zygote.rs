//! Template processes (zygotes): one pre-initialised runtime process per environment that
//! sandboxed instances are forked from instead of starting an interpreter by exec
//! (`docs/design/009-zygote.md`).
//!
//! The sandbox is unchanged: every instance still gets its monitor and init, which assemble its
//! namespaces, cgroups and root exactly as for an exec'd runtime; only the last step differs.
//! The init hands the sandbox (namespace descriptors and stdio) to the environment's template,
//! whose fork joins it, drops to the instance's user with `no_new_privs` and runs the server
//! with its modules already loaded (`functions/runtimes/python/zygote.py`). When there is no
//! template for an environment (`--zygote off`, another runtime, start variables that change
//! how the interpreter starts), the instance starts by exec, said once per environment; when a
//! template is gone or fails, the init says so in the instance's log and starts the runtime by
//! exec in the same sandbox, and the next start replaces the template.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kappa_core::{FunctionId, InstanceSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::ZygoteMode;
use crate::runtime::ResolvedRuntime;

/// How long a new template may take to load the runtime and listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The templates of one backend.
#[derive(Debug)]
pub(crate) struct Zygotes {
    mode: ZygoteMode,
    /// Where the control sockets live (the sandbox's sockets directory, `0700`).
    sockets: PathBuf,
    next: AtomicU64,
    /// One template slot per environment. The slot's tokio mutex makes a start wait for its own
    /// environment's template start only; the map's std mutex is never held across an await.
    templates: Mutex<HashMap<FunctionId, Slot>>,
    /// Environments already told why they start by exec.
    said: Mutex<HashSet<(FunctionId, &'static str)>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Template>>>;

#[derive(Debug)]
struct Template {
    /// The environment generation and interpreter it was started for.
    key: (i64, PathBuf),
    socket: PathBuf,
    pid: i32,
    /// Set when the process ended.
    gone: Arc<AtomicBool>,
}

impl Template {
    fn stop(&self) {
        if !self.gone.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Zygotes {
    fn drop(&mut self) {
        let templates = self
            .templates
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in templates.values() {
            if let Ok(slot) = slot.try_lock()
                && let Some(template) = slot.as_ref()
            {
                template.stop();
            }
        }
    }
}

impl Zygotes {
    pub(crate) fn new(mode: ZygoteMode, sockets: PathBuf) -> Self {
        Self {
            mode,
            sockets,
            next: AtomicU64::new(0),
            templates: Mutex::new(HashMap::new()),
            said: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn mode(&self) -> ZygoteMode {
        self.mode
    }

    /// The control socket of the template `spec`'s instance is forked from, starting (or
    /// replacing) the environment's template as needed; `None` when it starts by exec (the
    /// reason logged once per environment).
    pub(crate) async fn socket_for(
        &self,
        spec: &InstanceSpec,
        runtime: &ResolvedRuntime,
    ) -> Option<PathBuf> {
        let env = &spec.environment;
        // The environment's own setting wins; the platform's `--zygote` is the default.
        match (spec.zygote, self.mode) {
            (Some(false), _) => {
                self.say_once(env, "exec: the environment sets zygote: false");
                return None;
            }
            (None, ZygoteMode::Off) => return None,
            (Some(true), _) | (None, ZygoteMode::On) => {}
        }
        let builtin = match runtime {
            ResolvedRuntime::BuiltIn(b) if b.name == "python" => b,
            _ => {
                self.say_once(env, "exec: this runtime has no template");
                return None;
            }
        };
        // Variables read while the interpreter starts would not reach a forked instance. (The
        // executor starts instances without variables today; a function's variables arrive at
        // specialization, after the start, in both modes.)
        if spec.env.keys().any(|k| k.starts_with("PYTHON")) {
            self.say_once(
                env,
                "exec: the environment sets PYTHON* variables, which take effect only when the interpreter starts",
            );
            return None;
        }
        let key = (spec.env_generation, builtin.interpreter.clone());
        let slot = self
            .templates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(env.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(template) = slot.as_ref() {
            if template.key == key && !template.gone.load(Ordering::SeqCst) {
                return Some(template.socket.clone());
            }
            let why = if template.key == key {
                "the template ended; starting a new one"
            } else {
                "the environment changed; replacing its template"
            };
            tracing::info!(environment = %env, pid = template.pid, "{why}");
            template.stop();
            *slot = None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let socket = self.sockets.join(format!("z{n}"));
        let script = builtin.dir.join(&builtin.script);
        match start(&builtin.interpreter, &script, &socket, env).await {
            Ok((pid, gone)) => {
                tracing::info!(environment = %env, pid, socket = %socket.display(), "template started");
                *slot = Some(Template {
                    key,
                    socket: socket.clone(),
                    pid,
                    gone,
                });
                Some(socket)
            }
            Err(why) => {
                tracing::warn!(environment = %env, reason = %why, "no template: instances start by exec");
                None
            }
        }
    }

    /// Stops the template of the environment `env` (deleted), if it has one.
    pub(crate) async fn stop(&self, env: &FunctionId) {
        let slot = self
            .templates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(env);
        if let Some(slot) = slot
            && let Some(template) = slot.lock().await.take()
        {
            tracing::info!(environment = %env, pid = template.pid, "environment deleted; stopping its template");
            template.stop();
        }
        self.said
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(e, _)| e != env);
    }

    /// Stops every template (the backend's shutdown).
    pub(crate) async fn stop_all(&self) {
        let slots: Vec<Slot> = self
            .templates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(template) = slot.lock().await.take() {
                template.stop();
            }
        }
    }

    fn say_once(&self, env: &FunctionId, why: &'static str) {
        let first = self
            .said
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((env.clone(), why));
        if first {
            tracing::info!(environment = %env, "instances start by {why}");
        }
    }
}

/// Starts a template: `interpreter -s script --zygote socket`, as root, with only the platform's
/// default variables (nothing an environment sets reaches a root process). It is started and
/// waited for from a thread of its own, which is its parent-death signal's reference: the
/// template dies with the platform (`zygote.py` sets `PR_SET_PDEATHSIG`). Returns once it
/// listens.
async fn start(
    interpreter: &Path,
    script: &Path,
    socket: &Path,
    env: &FunctionId,
) -> Result<(i32, Arc<AtomicBool>), String> {
    let mut command = Command::new(interpreter);
    command
        .arg("-s")
        .arg(script)
        .arg("--zygote")
        .arg(socket)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gone = Arc::new(AtomicBool::new(false));
    let gone_in_thread = gone.clone();
    let env = env.to_string();
    std::thread::Builder::new()
        .name("kappa-zygote".into())
        .spawn(move || supervise(command, ready_tx, gone_in_thread, env))
        .map_err(|e| format!("cannot start the template's thread: {e}"))?;
    match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(pid))) => Ok((pid, gone)),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(_)) => Err("the template's thread ended".to_owned()),
        Err(_) => Err(format!(
            "the template did not start within {READY_TIMEOUT:?}"
        )),
    }
}

/// The template's thread: spawns it, reports when it listens, logs its output, waits for it.
fn supervise(
    mut command: Command,
    ready: tokio::sync::oneshot::Sender<Result<i32, String>>,
    gone: Arc<AtomicBool>,
    env: String,
) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot run the template: {e}")));
            gone.store(true, Ordering::SeqCst);
            return;
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or_default();
    if let Some(stderr) = child.stderr.take() {
        let env = env.clone();
        let _ = std::thread::Builder::new()
            .name("kappa-zygote-err".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    tracing::warn!(environment = %env, pid, "template: {line}");
                }
            });
    }
    // The first line says it listens; the rest is logged from another thread, so that this
    // one notices the template's end even while a fork of it still holds the pipe.
    let mut ready = Some(ready);
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("kappa python template ready") => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(pid));
                }
            }
            Some(Ok(line)) => tracing::info!(environment = %env, pid, "template: {line}"),
            _ => {}
        }
        let env = env.clone();
        let _ = std::thread::Builder::new()
            .name("kappa-zygote-out".into())
            .spawn(move || {
                for line in lines.map_while(Result::ok) {
                    tracing::info!(environment = %env, pid, "template: {line}");
                }
            });
    }
    let status = child.wait();
    gone.store(true, Ordering::SeqCst);
    if let Some(ready) = ready.take() {
        let _ = ready.send(Err(format!(
            "the template exited before it listened ({})",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        )));
    } else {
        tracing::info!(environment = %env, pid, "template ended ({status:?})");
    }
}
