//! Running a package's build command in the same sandbox and limits as instances.
//!
//! [`BuildSandbox`] runs one command (`/bin/sh -c <command>`) in a writable build directory
//! that appears at `/build` inside the built-in sandbox, with the same read-only system,
//! namespaces, unprivileged user and parent-death tie as instances, the environment's memory,
//! CPU and pids limits through the same cgroup code, and egress through user-mode networking
//! when it is available (pip and npm need their registries). Its stdout and stderr are captured together into a bounded tail, and it is
//! killed (with everything it started) when the build timeout passes.
//!
//! It does not know about packages, archives or the store: the builder prepares the directory,
//! chooses the command and stores what the build left.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kappa_core::{BackendError, ExitReason, Limits};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cgroup::Cgroups;
use crate::config::{CgroupMode, EgressMode, SandboxMode};
use crate::procs;
use crate::sandbox::{self, Sandbox};

/// Where the build directory appears inside the sandbox (also `$SRC_PKG` and `$DEPLOY_PKG`).
pub const SANDBOX_BUILD_DIR: &str = "/build";
/// Default bound on a build's run time.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Default bound on the captured output: the last 256 KiB are kept.
pub const DEFAULT_BUILD_LOG_BYTES: usize = 256 * 1024;

/// How long the output readers may run on after the build process ended (a background process
/// the build left holding the pipes is killed, but only when the sandbox is not there to do it).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// The longest build id (it names a cgroup).
const MAX_ID_LEN: usize = 128;

/// One build to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Names the build's cgroup: 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
    pub id: String,
    /// The writable build directory on the host, holding the source; the build leaves its
    /// result there. Bound at `/build` in the sandbox, which is also the working directory.
    pub dir: PathBuf,
    /// The command, run with `/bin/sh -c`.
    pub command: String,
    /// Extra environment variables (`SRC_PKG`, `DEPLOY_PKG`, `HOME` and `PATH` are set by the
    /// sandbox and win).
    pub env: BTreeMap<String, String>,
    /// Host directories bound read-only at the same path (an interpreter installed outside
    /// `/usr`); their `bin/` is added to `PATH`.
    pub read_only: Vec<PathBuf>,
    /// Memory, CPU and pids limits.
    pub limits: Limits,
    /// The build is killed when it runs longer.
    pub timeout: Duration,
    /// Whether the build may reach addresses outside the machine (through user-mode
    /// networking, when the platform has it); it never reaches the host's own listeners.
    pub network: bool,
    /// How much of the output is kept (the end of it).
    pub max_log_bytes: usize,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The command exited with status 0.
    Succeeded,
    /// The command exited otherwise (a non-zero code, a signal, an OOM kill).
    Failed(ExitReason),
    /// The command ran longer than the timeout and was killed.
    TimedOut(Duration),
}

/// What a build did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    /// How it ended.
    pub outcome: BuildOutcome,
    /// Its stdout and stderr, interleaved as they arrived, at most `max_log_bytes` (the end).
    pub log: String,
    /// Whether the beginning of the output was dropped to stay within `max_log_bytes`.
    pub log_truncated: bool,
}

impl BuildOutput {
    /// Whether the build succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == BuildOutcome::Succeeded
    }
}

/// Runs build commands sandboxed and limited like instances. Cheap to clone.
#[derive(Clone)]
pub struct BuildSandbox {
    inner: Arc<SandboxInner>,
}

struct SandboxInner {
    /// The built-in sandbox; `None` only when it was switched off explicitly.
    sandbox: Option<Sandbox>,
    /// `setpriv`, which ties an unsandboxed build to the platform's life.
    setpriv: Option<PathBuf>,
    cgroups: Cgroups,
}

impl std::fmt::Debug for BuildSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSandbox")
            .field("sandboxed", &self.inner.sandbox.is_some())
            .field("cgroups", &self.inner.cgroups.version())
            .finish_non_exhaustive()
    }
}

impl BuildSandbox {
    /// Prepares the build sandbox with the same modes as the local backend (`work_dir` holds
    /// its root mount point; `helper` is the sandbox helper executable). Fails when the sandbox
    /// cannot be made, unless it is switched off.
    pub async fn new(
        sandbox: SandboxMode,
        helper: Option<&Path>,
        egress: EgressMode,
        cgroups: CgroupMode,
        work_dir: &Path,
    ) -> Result<Self, BackendError> {
        let sandbox = Sandbox::detect(sandbox, helper, egress, work_dir)
            .await
            .map_err(|why| BackendError::Start(format!("cannot sandbox builds: {why}")))?;
        let setpriv = match sandbox {
            Some(_) => None,
            None => {
                tracing::warn!("builds are UNSANDBOXED (--sandbox none)");
                sandbox::detect_setpriv().await
            }
        };
        let cgroups = Cgroups::detect(cgroups)?;
        Ok(Self {
            inner: Arc::new(SandboxInner {
                sandbox,
                setpriv,
                cgroups,
            }),
        })
    }

    /// Whether builds run in the sandbox.
    pub fn sandboxed(&self) -> bool {
        self.inner.sandbox.is_some()
    }

    /// Whether cgroup limits are enforced, and which hierarchy.
    pub fn cgroup_version(&self) -> Option<crate::CgroupVersion> {
        self.inner.cgroups.version()
    }

    /// Runs one build and waits for it (at most `spec.timeout`, then it is killed). An `Err`
    /// means the build could not be run at all (bad id or directory, the launcher missing); a
    /// build that ran and failed is an `Ok` with [`BuildOutcome::Failed`] or
    /// [`BuildOutcome::TimedOut`].
    ///
    /// The build's parent-death signal (the sandbox monitor's, or `setpriv`'s) follows
    /// the thread that starts it: call this from a task on a runtime worker thread (which lives
    /// as long as the runtime), not from a blocking-pool thread.
    pub async fn run(&self, spec: &BuildSpec) -> Result<BuildOutput, BackendError> {
        check_id(&spec.id)?;
        if !spec.dir.is_dir() {
            return Err(BackendError::Io(format!(
                "build directory {} does not exist",
                spec.dir.display()
            )));
        }
        let inner = &self.inner;
        let cgroup = inner
            .cgroups
            .create(&format!("build-{}", spec.id), &spec.limits);
        let mut path = String::new();
        for dir in &spec.read_only {
            path.push_str(&dir.join("bin").to_string_lossy());
            path.push(':');
        }
        path.push_str("/usr/local/bin:/usr/bin:/bin");
        let (build_dir, home) = if inner.sandbox.is_some() {
            (PathBuf::from(SANDBOX_BUILD_DIR), PathBuf::from("/tmp"))
        } else {
            (spec.dir.clone(), std::env::temp_dir())
        };
        let mut env: Vec<(String, String)> = vec![
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend([
            ("PATH".into(), path),
            ("HOME".into(), home.to_string_lossy().into_owned()),
            ("SRC_PKG".into(), build_dir.to_string_lossy().into_owned()),
            (
                "DEPLOY_PKG".into(),
                build_dir.to_string_lossy().into_owned(),
            ),
        ]);
        let egress_wanted = spec.network
            && inner
                .sandbox
                .as_ref()
                .is_some_and(Sandbox::egress_available);
        let command = match &inner.sandbox {
            Some(sandbox) => {
                let user = sandbox.next_user();
                if let Err(e) = chown_tree(&spec.dir, user) {
                    cgroup.remove().await;
                    return Err(BackendError::Io(format!(
                        "cannot hand {} to the build's user: {e}",
                        spec.dir.display()
                    )));
                }
                let sandbox_spec = sandbox.build_spec(
                    &spec.dir,
                    SANDBOX_BUILD_DIR,
                    &spec.read_only,
                    &spec.command,
                    env,
                    cgroup.procs_files(),
                    user,
                    egress_wanted,
                );
                sandbox.command(&sandbox_spec)
            }
            None => {
                let chain = sandbox::launcher(
                    inner.setpriv.as_deref(),
                    &cgroup.procs_files(),
                    vec!["/bin/sh".into(), "-c".into(), spec.command.clone().into()],
                );
                let mut command = std::process::Command::new(&chain[0]);
                command.args(&chain[1..]).env_clear().envs(env);
                Ok(command)
            }
        };
        let mut command = match command {
            Ok(command) => command,
            Err(e) => {
                cgroup.remove().await;
                return Err(BackendError::Start(format!(
                    "cannot prepare the build sandbox: {e}"
                )));
            }
        };
        let program = PathBuf::from(command.get_program());
        command
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = match tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                cgroup.remove().await;
                return Err(BackendError::Start(format!(
                    "cannot run {}: {e}",
                    program.display()
                )));
            }
        };
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_default();
        tracing::info!(build = %spec.id, pid, sandboxed = inner.sandbox.is_some(), "build started");
        // Egress is set up while the sandbox starts; its init waits for the route. Kept until
        // the build ends.
        let _egress = match &inner.sandbox {
            Some(sandbox) if egress_wanted => {
                let marker = ("KAPPA_BUILD_ID", spec.id.as_str());
                match sandbox
                    .start_egress(u32::try_from(pid).unwrap_or_default(), marker)
                    .await
                {
                    Ok(egress) => egress,
                    Err(why) => {
                        tracing::warn!(build = %spec.id, reason = %why, "the build has no network egress");
                        None
                    }
                }
            }
            _ => None,
        };
        let tail = Arc::new(Tail::new(spec.max_log_bytes));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(pump(stdout, tail.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(pump(stderr, tail.clone())));
        }
        let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
        let timed_out = waited.is_err();
        let status = match waited {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                tracing::warn!(build = %spec.id, error = %e, "cannot wait for the build process");
                None
            }
            Err(_) => None,
        };
        // Whatever the build left running (its process group, its cgroup) goes with it.
        if pid > 0 {
            procs::signal_tree(pid, Signal::SIGKILL, false);
        }
        for dir in &cgroup.dirs {
            for task in crate::cgroup::tasks(dir) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(task), Signal::SIGKILL);
            }
        }
        if status.is_none() {
            let _ = child.wait().await;
        }
        for reader in readers {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, reader).await;
        }
        let oom_killed = cgroup.oom_kills() > 0;
        cgroup.remove().await;
        let outcome = match status {
            Some(status) if status.success() && !oom_killed => BuildOutcome::Succeeded,
            Some(status) => BuildOutcome::Failed(exit_reason(status, oom_killed)),
            None if timed_out => BuildOutcome::TimedOut(spec.timeout),
            None => BuildOutcome::Failed(ExitReason {
                oom_killed,
                ..ExitReason::default()
            }),
        };
        let (log, log_truncated) = tail.text();
        tracing::info!(build = %spec.id, ?outcome, log_bytes = log.len(), "build ended");
        Ok(BuildOutput {
            outcome,
            log,
            log_truncated,
        })
    }
}

/// Why a build's process ended. The sandbox's init and the shell report a child killed by signal N as
/// exit code 128+N.
fn exit_reason(status: std::process::ExitStatus, oom_killed: bool) -> ExitReason {
    if let Some(signal) = status.signal() {
        return ExitReason {
            code: None,
            signal: Some(signal),
            oom_killed,
        };
    }
    match status.code() {
        Some(code) if (129..=128 + 64).contains(&code) => ExitReason {
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

/// Gives `dir` and everything in it to the build's user.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), (uid, gid))?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

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
            "invalid build id {id:?}: use 1 to {MAX_ID_LEN} ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// Copies one output stream into the shared tail until it ends.
async fn pump<R: AsyncRead + Unpin>(mut reader: R, tail: Arc<Tail>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail.push(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// The last bytes of a build's output.
struct Tail {
    limit: usize,
    /// A std mutex: held for a copy of one read chunk, never across an await.
    state: Mutex<(VecDeque<u8>, bool)>,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            state: Mutex::new((VecDeque::new(), false)),
        }
    }

    fn push(&self, chunk: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0.extend(chunk);
        let excess = state.0.len().saturating_sub(self.limit);
        if excess > 0 {
            state.0.drain(..excess);
            state.1 = true;
        }
    }

    /// The kept output as text (starting at a line boundary when the start was dropped), and
    /// whether something was dropped.
    fn text(&self) -> (String, bool) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes: Vec<u8> = state.0.iter().copied().collect();
        let truncated = state.1;
        drop(state);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if truncated && let Some(newline) = text.find('\n') {
            return (text[newline + 1..].to_owned(), true);
        }
        (text, truncated)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(dir: &Path, command: &str) -> BuildSpec {
        BuildSpec {
            id: format!("t{}", uuid::Uuid::new_v4().simple()),
            dir: dir.to_path_buf(),
            command: command.to_owned(),
            env: BTreeMap::new(),
            read_only: Vec::new(),
            limits: Limits {
                pids: Some(256),
                ..Limits::default()
            },
            timeout: Duration::from_secs(60),
            network: true,
            max_log_bytes: 4096,
        }
    }

    /// Unsandboxed: these check the runner (output, limits, timeouts); the sandboxed builds
    /// are tested in `tests/it/`, where the sandbox helper executable exists.
    async fn sandbox() -> BuildSandbox {
        let work = tempfile::tempdir().unwrap().keep();
        BuildSandbox::new(
            SandboxMode::None,
            None,
            EgressMode::Off,
            CgroupMode::Auto,
            &work,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_build_writes_into_its_directory_and_its_output_is_captured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "source").unwrap();
        let sb = sandbox().await;
        let out = sb
            .run(&spec(
                dir.path(),
                "cat in.txt > out.txt && echo \"src=$SRC_PKG deploy=$DEPLOY_PKG\" && echo oops >&2",
            ))
            .await
            .unwrap();
        assert!(out.succeeded(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "source"
        );
        let expected = if sb.sandboxed() {
            "src=/build deploy=/build".to_owned()
        } else {
            format!(
                "src={} deploy={}",
                dir.path().display(),
                dir.path().display()
            )
        };
        assert!(out.log.contains(&expected), "{}", out.log);
        assert!(out.log.contains("oops"), "{}", out.log);
    }

    #[tokio::test]
    async fn failures_report_the_exit_code_and_keep_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let out = sandbox()
            .await
            .run(&spec(
                dir.path(),
                "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; exit 3",
            ))
            .await
            .unwrap();
        assert_eq!(
            out.outcome,
            BuildOutcome::Failed(ExitReason {
                code: Some(3),
                signal: None,
                oom_killed: false
            })
        );
        assert!(out.log_truncated);
        assert!(out.log.len() <= 4096);
        assert!(out.log.ends_with("line 1999\n"), "{}", out.log);
        assert!(
            out.log.starts_with("line "),
            "starts on a line: {}",
            out.log
        );
    }

    #[tokio::test]
    async fn a_build_over_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "sleep 300 & echo started; wait");
        s.timeout = Duration::from_millis(500);
        let out = sandbox().await.run(&s).await.unwrap();
        assert_eq!(
            out.outcome,
            BuildOutcome::TimedOut(Duration::from_millis(500))
        );
        assert!(out.log.contains("started"), "{}", out.log);
    }

    #[tokio::test]
    async fn bad_ids_and_missing_directories_are_errors() {
        let sb = sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "true");
        s.id = "../x".into();
        assert!(sb.run(&s).await.is_err());
        let s = spec(&dir.path().join("missing"), "true");
        assert!(sb.run(&s).await.is_err());
    }
}
