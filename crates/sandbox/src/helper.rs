//! The sandbox helper: the platform's own executable, run again as a sandbox's monitor and init
//! (see the crate documentation for what each does).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, chdir, pivot_root, sethostname};

use crate::claim;
use crate::connector;
use crate::netlink;
use crate::spec::SandboxSpec;
use crate::zygote;

/// The environment variable that makes the platform's executable act as a sandbox helper
/// stage (`monitor` or `init`) instead of its normal self.
pub const STAGE_VAR: &str = "__KAPPA_SANDBOX_STAGE";
/// The environment variable carrying the [`SandboxSpec`] as JSON to the helper stages.
const SPEC_VAR: &str = "__KAPPA_SANDBOX_SPEC";
/// The exit code of a helper that could not set the sandbox up (its reason is on stderr).
pub const SETUP_FAILED: i32 = 125;
/// What a helper prints for the `identify` stage: this crate's version and a hash of its
/// sources, so the platform uses a separate helper executable only when it was built from the
/// same sandbox code as itself (see [`identify`]).
pub const IDENTITY: &str = concat!(
    "kappa-sandbox ",
    env!("CARGO_PKG_VERSION"),
    " ",
    env!("KAPPA_SANDBOX_SOURCE_HASH")
);
/// Device nodes bound from the host into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The command that starts a sandbox: `program` (the platform's executable, or a test build of
/// the helper) with the stage and spec in its environment. The caller adds stdio, its own
/// marker variables and process group, and spawns it.
pub fn command(program: &Path, spec: &SandboxSpec) -> io::Result<Command> {
    let json = serde_json::to_string(spec).map_err(io::Error::other)?;
    let mut command = Command::new(program);
    command
        .env_clear()
        .env(STAGE_VAR, "monitor")
        .env(SPEC_VAR, json);
    Ok(command)
}

/// Whether `program` is a sandbox helper built from the same sandbox code as this process (it
/// answers the `identify` stage with [`IDENTITY`]). A helper of another build could read a
/// [`SandboxSpec`] differently, so the platform uses only one that matches.
pub fn identify(program: &Path) -> bool {
    Command::new(program)
        .env_clear()
        .env(STAGE_VAR, "identify")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == IDENTITY.as_bytes())
}

/// Runs the helper stage named in the environment, if any, and returns its exit code; `None`
/// when this process is not a helper (the caller's `main` then goes on as usual). Call it first
/// thing in `main`, before starting threads or an async runtime.
pub fn run_if_requested() -> Option<i32> {
    let stage = std::env::var_os(STAGE_VAR)?;
    let result = match stage.to_str() {
        Some("monitor") => read_spec().and_then(|spec| monitor(&spec)),
        Some("init") => read_spec().and_then(|spec| init(&spec)),
        Some(zygote::WAIT_STAGE) => {
            zygote::wait().context(|| "waiting for the payload forked from the template".into())
        }
        Some("identify") => {
            println!("{IDENTITY}");
            Ok(0)
        }
        _ => Err(SetupError::new(
            "unknown helper stage",
            io::ErrorKind::InvalidInput.into(),
        )),
    };
    Some(match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kappa sandbox: {e}");
            SETUP_FAILED
        }
    })
}

/// A step of the sandbox set-up that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct SetupError {
    what: String,
    #[source]
    source: io::Error,
}

impl SetupError {
    fn new(what: impl Into<String>, source: io::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T> Context<T> for Result<T, io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|e| SetupError::new(what(), e))
    }
}

impl<T> Context<T> for Result<T, nix::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|e| SetupError::new(what(), io::Error::from(e)))
    }
}

fn read_spec() -> Result<SandboxSpec, SetupError> {
    let json = std::env::var(SPEC_VAR)
        .map_err(io::Error::other)
        .context(|| format!("reading {SPEC_VAR}"))?;
    serde_json::from_str(&json)
        .map_err(io::Error::other)
        .context(|| format!("parsing {SPEC_VAR}"))
}

/// The monitor stage (see the crate documentation).
fn monitor(spec: &SandboxSpec) -> Result<i32, SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .context(|| "setting the parent-death signal".into())?;
    let me = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        fs::write(procs, &me).context(|| format!("joining cgroup {}", procs.display()))?;
    }
    let listener = match &spec.connector {
        Some(path) => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SetupError::new(format!("removing {}", path.display()), e)),
            }
            let listener = UnixListener::bind(path)
                .context(|| format!("binding the connector {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .context(|| format!("restricting {}", path.display()))?;
            Some(listener)
        }
        None => None,
    };
    // A graceful stop signals the payload; the monitor stays to report its status. (A handler
    // rather than SIG_IGN, so the payload still starts with the default disposition.)
    let ignored = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, ignored.clone())
            .context(|| format!("handling signal {signal}"))?;
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .context(|| "creating the namespaces".into())?;
    netlink::loopback_up().context(|| "bringing the loopback interface up".into())?;
    // The connector's thread inherits this thread's network namespace. It starts before the
    // PID namespace: a process whose children go to another PID namespace cannot add threads.
    if let Some(listener) = listener {
        std::thread::Builder::new()
            .name("connector".into())
            .spawn(move || connector::serve(&listener))
            .context(|| "starting the connector".into())?;
    }
    unshare(CloneFlags::CLONE_NEWPID).context(|| "creating the PID namespace".into())?;
    let mut init = Command::new("/proc/self/exe");
    init.env(STAGE_VAR, "init")
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut init = init
        .spawn()
        .context(|| "starting the sandbox's init".into())?;
    let status = loop {
        match init.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SetupError::new("waiting for the sandbox's init", e)),
        }
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => SETUP_FAILED,
    })
}

/// The init stage, PID 1 of the sandbox (see the crate documentation).
fn init(spec: &SandboxSpec) -> Result<i32, SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .context(|| "setting the parent-death signal".into())?;
    // The template's socket lives outside the sandbox: connect before the root is pivoted. (A
    // spare is handed its connection with the claim.)
    let template = spec
        .zygote
        .as_deref()
        .filter(|_| !spec.claim)
        .and_then(|path| match zygote::connect(path) {
            Ok(conn) => Some(conn),
            Err(e) => {
                eprintln!(
                    "kappa sandbox: template {} unavailable ({e}); starting the runtime by exec",
                    path.display()
                );
                None
            }
        });
    build_root(spec)?;
    sethostname(&spec.hostname).context(|| "setting the host name".into())?;
    if let Some(ms) = spec.wait_for_route_ms {
        wait_for_default_route(Duration::from_millis(ms));
    }
    nix::sys::prctl::set_no_new_privs().context(|| "setting no_new_privs".into())?;
    let claimed;
    let mut preforked = None;
    let (spec, template) = if spec.claim {
        let waiting = "waiting for this spare sandbox's claim";
        claim::say(claim::READY).context(|| waiting.into())?;
        let (mut claim, mut template) = claim::receive(None).context(|| waiting.into())?;
        if claim.prefork {
            // Everything but the variables, ahead of the claim (design note 012).
            let conn = template.take().ok_or_else(|| {
                SetupError::new(
                    "forking this spare's payload ahead",
                    io::Error::other("no template connection came"),
                )
            })?;
            let forked = zygote::prefork(conn, spec)
                .context(|| "forking this spare's payload ahead".into())?;
            claim::say(claim::FORKED).context(|| waiting.into())?;
            (claim, template) = claim::receive(Some(forked.conn())).context(|| waiting.into())?;
            preforked = Some(forked);
        }
        claim::detach().context(|| waiting.into())?;
        claimed = SandboxSpec {
            env: claim.env,
            ..spec.clone()
        };
        (&claimed, template)
    } else {
        (spec, template)
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(SetupError::new(
            "starting the payload",
            io::ErrorKind::InvalidInput.into(),
        ));
    };
    let mut payload = Command::new(program);
    payload
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some((uid, gid)) = spec.user {
        // std drops the supplementary groups too when it changes the user as root.
        payload.uid(uid).gid(gid);
        give_pipes(uid, gid)?;
    }
    if let Some(forked) = preforked {
        match forked.start(&spec.env) {
            Ok(forked) => {
                return zygote::supervise(forked)
                    .context(|| "supervising the payload forked from the template".into());
            }
            Err(e) => eprintln!(
                "kappa sandbox: the runtime forked ahead could not be started ({e}); starting it by exec"
            ),
        }
    }
    if let Some(conn) = template {
        match zygote::fork_payload(conn, spec) {
            Ok(forked) => {
                return zygote::supervise(forked)
                    .context(|| "supervising the payload forked from the template".into());
            }
            Err(e) => eprintln!(
                "kappa sandbox: the template could not fork the runtime ({e}); starting it by exec"
            ),
        }
    }
    let payload = payload
        .spawn()
        .context(|| format!("cannot run {program}"))?;
    let payload = Pid::from_raw(i32::try_from(payload.id()).unwrap_or(-1));
    // PID 1 adopts every orphan of the namespace: reap them all until the payload ends.
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == payload => return Ok(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == payload => {
                return Ok(128 + signal as i32);
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(SetupError::new("waiting for the payload", e.into())),
        }
    }
}

/// Hands the output pipes the platform reads (stdout, stderr) to the payload's user, so that
/// it can open them again by name (`/dev/stderr`, `/proc/self/fd/2`), as nginx does. Only pipes:
/// a device or file inherited as stdio is never re-owned.
fn give_pipes(uid: u32, gid: u32) -> Result<(), SetupError> {
    use std::os::fd::AsFd;
    let out = std::io::stdout();
    let err = std::io::stderr();
    for (name, fd) in [("stdout", out.as_fd()), ("stderr", err.as_fd())] {
        let stat = rustix::fs::fstat(fd).map_err(io::Error::from);
        let is_pipe = stat.as_ref().is_ok_and(|s| {
            rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Fifo
        });
        if is_pipe {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(io::Error::from)
            .context(|| format!("handing the {name} pipe to the payload's user"))?;
        }
    }
    Ok(())
}

/// Assembles the root file system on a tmpfs at `spec.root` and pivots into it.
fn build_root(spec: &SandboxSpec) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context(|| "making the mounts private".into())?;
    let root = &spec.root;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .context(|| format!("mounting the root tmpfs on {}", root.display()))?;
    let inside = |path: &Path| -> PathBuf { root.join(path.strip_prefix("/").unwrap_or(path)) };
    // `/tmp` first: a bind beneath it (a server under a host `/tmp/...` path named by an
    // environment's command) then stays visible on top of the sandbox's own `/tmp`.
    let tmp = inside(Path::new("/tmp"));
    fs::create_dir_all(&tmp).context(|| "creating /tmp".into())?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .context(|| "mounting /tmp".into())?;
    let mut read_only = Vec::new();
    for m in &spec.mounts {
        let target = inside(&m.target);
        let is_dir = fs::metadata(&m.source)
            .context(|| format!("bind source {}", m.source.display()))?
            .is_dir();
        if is_dir {
            fs::create_dir_all(&target)
        } else {
            target
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|()| fs::File::create(&target).map(drop))
        }
        .context(|| format!("creating the mount point {}", m.target.display()))?;
        mount(
            Some(&m.source),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .context(|| format!("binding {} at {}", m.source.display(), m.target.display()))?;
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if !m.writable {
            flags |= MsFlags::MS_RDONLY;
            read_only.push((target, flags));
        } else {
            mount(none, &target, none, flags, none)
                .context(|| format!("restricting {}", m.target.display()))?;
        }
    }
    for (target, link) in &spec.symlinks {
        let link = inside(link);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
        }
        symlink(target, &link).context(|| format!("linking {}", link.display()))?;
    }
    // After every mount point exists, so a target beneath a read-only bind could be created.
    for (target, flags) in read_only {
        mount(none, &target, none, flags, none)
            .context(|| format!("making {} read-only", target.display()))?;
    }
    let proc_dir = inside(Path::new("/proc"));
    fs::create_dir_all(&proc_dir).context(|| "creating /proc".into())?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .context(|| "mounting /proc".into())?;
    build_dev(&inside(Path::new("/dev")))?;
    chdir(root).context(|| format!("entering {}", root.display()))?;
    pivot_root(".", ".").context(|| "pivoting into the sandbox root".into())?;
    umount2(".", MntFlags::MNT_DETACH).context(|| "detaching the host's root".into())?;
    chdir("/").context(|| "entering /".into())?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .context(|| "making the root read-only".into())?;
    Ok(())
}

/// A minimal `/dev`: a few device nodes bound from the host, `shm`, and the usual links.
fn build_dev(dev: &Path) -> Result<(), SetupError> {
    let none: Option<&str> = None;
    fs::create_dir_all(dev).context(|| "creating /dev".into())?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .context(|| "mounting /dev".into())?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let node = dev.join(name);
        fs::File::create(&node).context(|| format!("creating /dev/{name}"))?;
        mount(Some(&host), &node, none, MsFlags::MS_BIND, none)
            .context(|| format!("binding /dev/{name}"))?;
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        symlink(target, dev.join(link)).context(|| format!("linking /dev/{link}"))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).context(|| "creating /dev/shm".into())?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .context(|| "mounting /dev/shm".into())?;
    Ok(())
}

/// Waits until the namespace has a default route (user-mode networking configured from
/// outside), at most `limit`; starts the payload anyway after that, saying so.
fn wait_for_default_route(limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if fs::read_to_string("/proc/net/route").is_ok_and(|routes| has_default_route(&routes)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("kappa sandbox: no network egress after {limit:?}; starting without it");
}

/// Whether a `/proc/<pid>/net/route` table has a default route (destination `00000000`).
pub fn has_default_route(routes: &str) -> bool {
    routes
        .lines()
        .skip(1)
        .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_found_in_proc_net_route() {
        let routes = "Iface\tDestination\tGateway \tFlags\n\
                      tap0\t00000000\t0202000A\t0003\n";
        assert!(has_default_route(routes));
        assert!(!has_default_route("Iface\tDestination\nlo\t0000007F\n"));
    }
}
