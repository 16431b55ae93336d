//! Bubblewrap sandboxing and the launcher chain that starts an instance process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::SandboxMode;
use crate::runtime::{ResolvedRuntime, SANDBOX_RUNTIME_DIR, command_paths};

/// Where an instance's code directory appears inside the sandbox.
pub(crate) const SANDBOX_USERFUNC: &str = "/userfunc";
/// Where an instance's writable working directory appears inside the sandbox.
pub(crate) const SANDBOX_WORK: &str = "/work";
/// Where an instance's secrets appear inside the sandbox (read-only): `/secrets/<ns>/<name>/<key>`.
pub(crate) const SANDBOX_SECRETS: &str = "/secrets";
/// Where an instance's config maps appear inside the sandbox (read-only).
pub(crate) const SANDBOX_CONFIGS: &str = "/configs";

/// The host directories of one instance that the sandbox binds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceDirs<'a> {
    /// The code, read-only at `/userfunc`.
    pub(crate) userfunc: &'a Path,
    /// The writable working directory, `/work`.
    pub(crate) work: &'a Path,
    /// The instance's own secrets, read-only at `/secrets`.
    pub(crate) secrets: &'a Path,
    /// The instance's own config maps, read-only at `/configs`.
    pub(crate) configs: &'a Path,
}

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

/// A usable bubblewrap.
#[derive(Debug, Clone)]
pub(crate) struct Bwrap {
    program: PathBuf,
}

/// Finds a usable bubblewrap unless `mode` is `None`; the error says why there is none.
pub(crate) async fn detect(mode: SandboxMode) -> Result<Bwrap, String> {
    if mode == SandboxMode::None {
        return Err("the sandbox mode is none".to_owned());
    }
    let program = find_on_path("bwrap").ok_or_else(|| "bwrap was not found on PATH".to_owned())?;
    let bwrap = Bwrap { program };
    bwrap.smoke_test().await?;
    Ok(bwrap)
}

impl Bwrap {
    /// Runs `/bin/true` in a sandbox shaped like an instance's.
    async fn smoke_test(&self) -> Result<(), String> {
        let mut args = common_args();
        args.push("--".into());
        args.push("/bin/true".into());
        let output = tokio::process::Command::new(&self.program)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("could not run {}: {e}", self.program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} smoke test {}: {}",
                self.program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// The bubblewrap command line that runs `runtime` with the instance directories `dirs`
    /// (host paths). Secrets and config maps are bound empty at start; the files the host
    /// writes into them at specialization appear inside, read-only, like the code.
    pub(crate) fn command(
        &self,
        runtime: &ResolvedRuntime,
        port: u16,
        dirs: InstanceDirs<'_>,
    ) -> Vec<OsString> {
        let InstanceDirs {
            userfunc,
            work,
            secrets,
            configs,
        } = dirs;
        let mut args = vec![self.program.clone().into_os_string()];
        args.extend(common_args());
        match runtime {
            ResolvedRuntime::BuiltIn(b) => {
                ro_bind(&mut args, &b.dir, Path::new(SANDBOX_RUNTIME_DIR));
                if let Some(prefix) = &b.interpreter_prefix {
                    ro_bind(&mut args, prefix, prefix);
                }
            }
            ResolvedRuntime::Command(_) => {}
        }
        // Read-only inside; the host still writes the code into it at specialization.
        ro_bind(&mut args, userfunc, Path::new(SANDBOX_USERFUNC));
        args.push("--bind".into());
        args.push(work.into());
        args.push(SANDBOX_WORK.into());
        ro_bind(&mut args, secrets, Path::new(SANDBOX_SECRETS));
        ro_bind(&mut args, configs, Path::new(SANDBOX_CONFIGS));
        // After `/work` and `/tmp`, so that a server under a host path of that name stays
        // visible (bubblewrap creates the mount point inside the instance's own directory).
        if let ResolvedRuntime::Command(command) = runtime {
            for path in command_paths(command) {
                ro_bind(&mut args, &path, &path);
            }
        }
        args.push("--chdir".into());
        args.push(SANDBOX_WORK.into());
        args.push("--".into());
        args.extend(runtime.argv(port, true));
        args
    }
}

/// Namespaces, lifetime and the read-only system, shared by instances and the smoke test.
/// There is deliberately no network namespace: the runtime listens on the host's loopback.
fn common_args() -> Vec<OsString> {
    system_args("kappa", &[], true)
}

/// The read-only system every sandbox (instances, builds) starts from: new pid/ipc/uts
/// namespaces, death with the parent, `/usr` and the system directories and `files` (when
/// present) read-only, fresh `/proc`, `/dev` and `/tmp`; the network is shared unless
/// `share_network` is false.
pub(crate) fn system_args(
    hostname: &str,
    extra_files: &[&str],
    share_network: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        hostname,
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if !share_network {
        args.push("--unshare-net".into());
    }
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            Ok(target) => {
                args.push("--symlink".into());
                args.push(target.into_os_string());
                args.push(dir.into());
            }
            Err(_) if path.is_dir() => ro_bind(&mut args, path, path),
            Err(_) => {}
        }
    }
    for file in SYSTEM_FILES.iter().chain(extra_files) {
        let path = Path::new(file);
        if path.exists() {
            ro_bind(&mut args, path, path);
        }
    }
    for arg in ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"] {
        args.push(arg.into());
    }
    args
}

pub(crate) fn ro_bind(args: &mut Vec<OsString>, host: &Path, inside: &Path) {
    args.push("--ro-bind".into());
    args.push(host.into());
    args.push(inside.into());
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

/// Finds `program` in the standard system directories, then on the platform's `PATH`.
fn find_on_path(program: &str) -> Option<PathBuf> {
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
/// of its arguments: the runtime is inside its cgroups before its first instruction, without
/// any code between fork and exec in the platform.
const JOIN_CGROUPS: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do echo $$ 2>/dev/null >"$1" || echo "kappa: could not join cgroup $1" >&2; shift; done; shift; exec "$@""#;

/// The full launcher chain: `[setpriv --pdeathsig KILL --] [sh -c <join> procs... --] argv`.
pub(crate) fn launcher(
    setpriv: Option<&Path>,
    cgroup_procs: &[PathBuf],
    argv: Vec<OsString>,
) -> Vec<OsString> {
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
    fn bwrap_command_binds_code_read_only_and_work_writable() {
        let bwrap = Bwrap {
            program: PathBuf::from("/usr/bin/bwrap"),
        };
        let runtime = ResolvedRuntime::Command("exec server".into());
        let args = bwrap.command(
            &runtime,
            9000,
            InstanceDirs {
                userfunc: Path::new("/d/userfunc"),
                work: Path::new("/d/work"),
                secrets: Path::new("/d/secrets"),
                configs: Path::new("/d/configs"),
            },
        );
        let joined: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        assert!(
            joined.contains("--ro-bind /d/userfunc /userfunc"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "--bind /d/work /work --ro-bind /d/secrets /secrets --ro-bind /d/configs /configs"
            ),
            "{joined}"
        );
        assert!(joined.contains("--chdir /work"), "{joined}");
        assert!(joined.contains("--die-with-parent"), "{joined}");
        assert!(!joined.contains("--unshare-net"), "{joined}");
        assert!(joined.ends_with("-- /bin/sh -c exec server"), "{joined}");
    }
}
