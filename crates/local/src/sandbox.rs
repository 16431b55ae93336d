//! The instances' and builds' sandbox: what `kappa_sandbox` is asked to build for them, the
//! user each runs as, and user-mode networking for their egress.
//!
//! Every sandbox gets the same read-only system (`/usr`, the system directories, a few files
//! of `/etc`), fresh `/proc`, `/dev` and `/tmp`, its own network namespace with only a loopback
//! interface (plus a `tap0` to user-mode networking when egress is on), and an unprivileged
//! user of its own. See `docs/security.md` for the threat model.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kappa_sandbox::{Mount, SandboxSpec};
use tokio::process::Child;
use tokio::time::Instant;

use crate::config::{EgressMode, SandboxMode};
use crate::runtime::{ResolvedRuntime, SANDBOX_RUNTIME_DIR, command_paths};

/// Where an instance's code directory appears inside the sandbox.
pub(crate) const SANDBOX_USERFUNC: &str = "/userfunc";
/// Where an instance's writable working directory appears inside the sandbox.
pub(crate) const SANDBOX_WORK: &str = "/work";
/// Where an instance's secrets appear inside the sandbox (read-only): `/secrets/<ns>/<name>/<key>`.
pub(crate) const SANDBOX_SECRETS: &str = "/secrets";
/// Where an instance's config maps appear inside the sandbox (read-only).
pub(crate) const SANDBOX_CONFIGS: &str = "/configs";
/// The port a runtime listens on inside its sandbox (its own network namespace: never taken).
pub(crate) const SANDBOX_PORT: u16 = 8888;

/// Host directories (or symlinks to them) that make up the sandbox's read-only system.
const SYSTEM_DIRS: [&str; 4] = ["/lib", "/lib64", "/bin", "/sbin"];
/// Host files bound read-only when present: the dynamic linker cache, time zone, CA
/// certificates and name resolution.
const SYSTEM_FILES: [&str; 6] = [
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
];
/// The first uid (and gid) given to sandboxes; each sandbox gets the next one, modulo
/// [`USER_COUNT`]. Far above any user a distribution creates.
const FIRST_USER: u32 = 3_000_000;
/// How many distinct users sandboxes cycle through.
const USER_COUNT: u32 = 1_000_000;
/// How long a start waits for the sandbox's network namespace to exist before setting up
/// egress, and then for the default route to appear.
const EGRESS_SETUP: Duration = Duration::from_secs(3);
/// The longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The built-in sandbox, ready to start instances and builds.
#[derive(Debug)]
pub(crate) struct Sandbox {
    /// The executable run as the sandbox helper.
    helper: PathBuf,
    /// The empty directory each sandbox assembles its root on (in its own mount namespace).
    root: PathBuf,
    /// The connectors' directory, `0700`: only the platform's user can open the sockets.
    sockets: PathBuf,
    /// `slirp4netns`, when instances get egress.
    slirp: Option<PathBuf>,
    /// The platform's data directory: never bound into a sandbox, whatever a command names.
    private: PathBuf,
}

/// The next user offset, for [`Sandbox::next_user`]: one counter for the whole process, so
/// that instances and builds (each with a `Sandbox` of their own) never share a user.
static NEXT_USER: AtomicU32 = AtomicU32::new(0);

/// The host directories of one instance that the sandbox binds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceDirs<'a> {
    /// The code, at `/userfunc`: owned by root, the instance may add files but never change
    /// or remove the code placed there (sticky, and the code files are root's and read-only).
    pub(crate) userfunc: &'a Path,
    /// The writable working directory, `/work`.
    pub(crate) work: &'a Path,
    /// The instance's own secrets, read-only at `/secrets`.
    pub(crate) secrets: &'a Path,
    /// The instance's own config maps, read-only at `/configs`.
    pub(crate) configs: &'a Path,
}

impl Sandbox {
    /// Checks that sandboxes can be made here (root, the helper, a smoke test) and prepares the
    /// shared directories under `data_dir`. The error says why not.
    pub(crate) async fn detect(
        mode: SandboxMode,
        helper: Option<&Path>,
        egress: EgressMode,
        data_dir: &Path,
    ) -> Result<Option<Self>, String> {
        if mode == SandboxMode::None {
            return Ok(None);
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "the sandbox gives every instance its own user and namespaces, which needs the \
                 platform to run as root; run it as root, or pass --sandbox none to run \
                 functions unsandboxed as your own user"
                    .to_owned(),
            );
        }
        let helper = helper
            .ok_or_else(|| "no sandbox helper executable was configured".to_owned())?
            .to_path_buf();
        let root = data_dir.join("sandbox-root");
        let sockets = data_dir.join("sockets");
        prepare_dir(&root, 0o755).map_err(|e| format!("{}: {e}", root.display()))?;
        // Leftover sockets of an earlier run go; only this platform's user may open new ones.
        let _ = kappa_runtime::place::remove_tree(&sockets);
        prepare_dir(&sockets, 0o700).map_err(|e| format!("{}: {e}", sockets.display()))?;
        let probe = sockets.join(format!("c{}", u64::MAX));
        if probe.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the data directory {} is too long for the sandbox's Unix sockets (at most {} bytes \
                 for {}); use a shorter --data-dir",
                data_dir.display(),
                MAX_SOCKET_PATH,
                probe.display()
            ));
        }
        let slirp = match egress {
            EgressMode::Off => None,
            EgressMode::Auto => on_path("slirp4netns"),
        };
        let sandbox = Self {
            helper,
            root,
            sockets,
            slirp,
            private: data_dir.parent().unwrap_or(data_dir).to_path_buf(),
        };
        sandbox.smoke_test().await?;
        Ok(Some(sandbox))
    }

    /// Whether sandboxes can get egress (user-mode networking is installed and not switched off).
    pub(crate) fn egress_available(&self) -> bool {
        self.slirp.is_some()
    }

    /// The directory of the connectors' sockets (and the templates' control sockets).
    pub(crate) fn sockets_dir(&self) -> &Path {
        &self.sockets
    }

    /// The connector socket path of the sandbox numbered `n`.
    pub(crate) fn socket_path(&self, n: u64) -> PathBuf {
        self.sockets.join(format!("c{n}"))
    }

    /// A user and group for one more sandbox.
    pub(crate) fn next_user(&self) -> (u32, u32) {
        let offset = NEXT_USER.fetch_add(1, Ordering::Relaxed) % USER_COUNT;
        let id = FIRST_USER + offset;
        (id, id)
    }

    /// The spec of an instance's sandbox.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn instance_spec(
        &self,
        runtime: &ResolvedRuntime,
        dirs: InstanceDirs<'_>,
        env: Vec<(String, String)>,
        cgroup_procs: Vec<PathBuf>,
        connector: PathBuf,
        user: (u32, u32),
    ) -> SandboxSpec {
        let mut mounts = system_mounts(&[]);
        if let ResolvedRuntime::BuiltIn(b) = runtime {
            mounts.push(Mount::read_only(&b.dir, SANDBOX_RUNTIME_DIR));
            if let Some(prefix) = &b.interpreter_prefix {
                mounts.push(Mount::read_only(prefix, prefix));
            }
        }
        mounts.push(Mount::writable(dirs.userfunc, SANDBOX_USERFUNC));
        mounts.push(Mount::writable(dirs.work, SANDBOX_WORK));
        mounts.push(Mount::read_only(dirs.secrets, SANDBOX_SECRETS));
        mounts.push(Mount::read_only(dirs.configs, SANDBOX_CONFIGS));
        if let ResolvedRuntime::Command(command) = runtime {
            for path in command_paths(command, &[self.private.as_path()]) {
                mounts.push(Mount::read_only(&path, &path));
            }
        }
        SandboxSpec {
            hostname: "kappa".to_owned(),
            root: self.root.clone(),
            mounts,
            symlinks: system_symlinks(),
            cgroup_procs,
            connector: Some(connector),
            user: Some(user),
            argv: runtime
                .argv(SANDBOX_PORT, true)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env,
            cwd: PathBuf::from(SANDBOX_WORK),
            wait_for_route_ms: None,
            zygote: None,
            claim: false,
            waiter_env: Vec::new(),
        }
    }

    /// The spec of a build's sandbox: the system, `read_only` host directories at the same
    /// path, `dir` writable at `build_dir`, and `command` run by `/bin/sh -c`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_spec(
        &self,
        dir: &Path,
        build_dir: &str,
        read_only: &[PathBuf],
        command: &str,
        env: Vec<(String, String)>,
        cgroup_procs: Vec<PathBuf>,
        user: (u32, u32),
        egress: bool,
    ) -> SandboxSpec {
        let mut mounts = system_mounts(&["/etc/passwd", "/etc/group"]);
        for path in read_only {
            if path.is_absolute() && path.exists() {
                mounts.push(Mount::read_only(path, path));
            }
        }
        mounts.push(Mount::writable(dir, build_dir));
        SandboxSpec {
            hostname: "kappa-build".to_owned(),
            root: self.root.clone(),
            mounts,
            symlinks: system_symlinks(),
            cgroup_procs,
            connector: None,
            user: Some(user),
            argv: vec!["/bin/sh".into(), "-c".into(), command.to_owned()],
            env,
            cwd: PathBuf::from(build_dir),
            wait_for_route_ms: egress.then_some(EGRESS_SETUP.as_millis() as u64),
            zygote: None,
            claim: false,
            waiter_env: Vec::new(),
        }
    }

    /// The command that starts a sandbox (stdio and process group are the caller's).
    pub(crate) fn command(&self, spec: &SandboxSpec) -> io::Result<std::process::Command> {
        kappa_sandbox::helper::command(&self.helper, spec)
    }

    /// Gives the sandbox whose monitor is `pid` egress through user-mode networking: waits for
    /// its network namespace, starts `slirp4netns` on it (marked with `marker`, so a later start
    /// finds it if the platform dies) and waits for the default route. `None` when egress is
    /// unavailable or could not be set up (said in the returned message).
    pub(crate) async fn start_egress(
        &self,
        pid: u32,
        marker: (&str, &str),
    ) -> Result<Option<Child>, String> {
        let Some(slirp) = &self.slirp else {
            return Ok(None);
        };
        let deadline = Instant::now() + EGRESS_SETUP;
        let own = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        let ns = format!("/proc/{pid}/ns/net");
        loop {
            match std::fs::read_link(&ns) {
                Ok(link) if link != own => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "the sandbox ended before its network was set up: {e}"
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err("the sandbox's network namespace did not appear".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // `--exit-fd 0`: slirp4netns ends when its stdin, a pipe whose other end only this
        // process holds (inside the returned `Child`), closes, so it dies with the platform
        // however the platform dies (it would otherwise keep the namespace alive).
        let child = tokio::process::Command::new(slirp)
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--exit-fd=0",
            ])
            .arg(pid.to_string())
            .arg("tap0")
            .env_clear()
            .env(marker.0, marker.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", slirp.display()))?;
        let route = format!("/proc/{pid}/net/route");
        loop {
            if std::fs::read_to_string(&route)
                .is_ok_and(|r| kappa_sandbox::helper::has_default_route(&r))
            {
                return Ok(Some(child));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not configure the sandbox's network within {EGRESS_SETUP:?}",
                    slirp.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Runs `/bin/true` in an instance-shaped sandbox.
    async fn smoke_test(&self) -> Result<(), String> {
        let spec = SandboxSpec {
            hostname: "kappa".to_owned(),
            root: self.root.clone(),
            mounts: system_mounts(&[]),
            symlinks: system_symlinks(),
            cgroup_procs: Vec::new(),
            connector: None,
            user: Some(self.next_user()),
            argv: vec!["/bin/true".to_owned()],
            env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            cwd: PathBuf::from("/"),
            wait_for_route_ms: None,
            zygote: None,
            claim: false,
            waiter_env: Vec::new(),
        };
        let command = self
            .command(&spec)
            .map_err(|e| format!("preparing the sandbox smoke test: {e}"))?;
        let output = tokio::process::Command::from(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                format!(
                    "could not run the sandbox helper {}: {e}",
                    self.helper.display()
                )
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the sandbox smoke test failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

fn prepare_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The read-only system every sandbox starts from: `/usr`, the system directories that are
/// real directories, and the system files (plus `extra_files`) that exist.
fn system_mounts(extra_files: &[&str]) -> Vec<Mount> {
    let mut mounts = vec![Mount::read_only("/usr", "/usr")];
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        if std::fs::read_link(path).is_err() && path.is_dir() {
            mounts.push(Mount::read_only(path, path));
        }
    }
    for file in SYSTEM_FILES.iter().chain(extra_files) {
        let path = Path::new(file);
        if path.exists() {
            mounts.push(Mount::read_only(path, path));
        }
    }
    mounts
}

/// The system directories that are symlinks on the host (merged `/usr`), as the same links.
fn system_symlinks() -> Vec<(PathBuf, PathBuf)> {
    SYSTEM_DIRS
        .iter()
        .filter_map(|dir| Some((std::fs::read_link(dir).ok()?, PathBuf::from(dir))))
        .collect()
}

/// `setpriv` when it supports `--pdeathsig`, so an unsandboxed instance dies with the platform.
pub(crate) async fn detect_setpriv() -> Option<PathBuf> {
    let program = find_on_path("setpriv")?;
    let status = tokio::process::Command::new(&program)
        .args(["--pdeathsig", "KILL", "--", "/bin/true"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .ok()?;
    status.success().then_some(program)
}

/// Finds `program` on the platform's `PATH` only (so a test, or an operator, can hide an
/// optional program by leaving it off `PATH`).
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds `program` in the standard system directories, then on the platform's `PATH`.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let standard = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"]
        .into_iter()
        .map(PathBuf::from);
    let from_env = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    standard
        .chain(from_env)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The shell snippet that moves itself into each cgroup given before `--`, then `exec`s the rest
/// of its arguments (unsandboxed instances and builds; the sandbox's monitor joins its cgroups
/// itself).
const JOIN_CGROUPS: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do echo $$ 2>/dev/null >"$1" || { echo "kappa: could not join cgroup $1" >&2; exit 125; }; shift; done; shift; exec "$@""#;

/// The launcher chain of an unsandboxed process: `[setpriv --pdeathsig KILL --] [sh -c <join>
/// procs... --] argv`.
pub(crate) fn launcher(
    setpriv: Option<&Path>,
    cgroup_procs: &[PathBuf],
    argv: Vec<std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    use std::ffi::OsString;
    let mut out = Vec::with_capacity(argv.len() + cgroup_procs.len() + 8);
    if let Some(setpriv) = setpriv {
        out.push(setpriv.as_os_str().to_owned());
        out.extend(["--pdeathsig", "KILL", "--"].map(OsString::from));
    }
    if !cgroup_procs.is_empty() {
        out.extend(["/bin/sh", "-c", JOIN_CGROUPS, "kappa-join-cgroups"].map(OsString::from));
        out.extend(cgroup_procs.iter().map(|p| p.as_os_str().to_owned()));
        out.push("--".into());
    }
    out.extend(argv);
    out
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn launcher_chain_orders_wrappers() {
        let argv = vec![
            OsString::from("/usr/bin/python3"),
            OsString::from("server.py"),
        ];
        let chain = launcher(
            Some(Path::new("/usr/bin/setpriv")),
            &[PathBuf::from("/cg/memory/cgroup.procs")],
            argv.clone(),
        );
        assert_eq!(chain[0], "/usr/bin/setpriv");
        assert_eq!(chain[4], "/bin/sh");
        assert_eq!(chain[7], "kappa-join-cgroups");
        assert_eq!(chain[8], "/cg/memory/cgroup.procs");
        assert_eq!(chain[9], "--");
        assert_eq!(&chain[10..], &argv[..]);
        assert_eq!(launcher(None, &[], argv.clone()), argv);
    }

    #[tokio::test]
    async fn join_snippet_execs_the_command_after_joining() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("cgroup.procs");
        let chain = launcher(
            None,
            std::slice::from_ref(&fake),
            vec!["/bin/sh".into(), "-c".into(), "echo $$".into()],
        );
        let out = tokio::process::Command::new(&chain[0])
            .args(&chain[1..])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        // The pid written to the group is the pid that ran the command (exec, not fork).
        let written = std::fs::read_to_string(&fake).unwrap();
        assert_eq!(written.trim(), String::from_utf8_lossy(&out.stdout).trim());
    }

    #[test]
    fn system_mounts_are_read_only_and_include_usr() {
        let mounts = system_mounts(&["/etc/passwd"]);
        assert_eq!(mounts[0], Mount::read_only("/usr", "/usr"));
        assert!(mounts.iter().all(|m| !m.writable));
        assert!(mounts.iter().any(|m| m.target == Path::new("/etc/passwd")));
    }

    #[test]
    fn users_are_unprivileged_and_distinct() {
        let sandbox = Sandbox {
            helper: PathBuf::from("/x"),
            root: PathBuf::from("/r"),
            sockets: PathBuf::from("/s"),
            slirp: None,
            private: PathBuf::from("/p"),
        };
        let (a, _) = sandbox.next_user();
        let (b, gid) = sandbox.next_user();
        assert!(a >= FIRST_USER && b != a && b >= FIRST_USER && gid == b);
    }
}
