//! The init's side of forking a payload from a template process (a zygote) instead of starting
//! it by exec (see `docs/design/009-zygote.md`).
//!
//! Protocol, one exchange per Unix connection to the template's control socket (a directory
//! only root can open, never bound into a sandbox):
//!
//! 1. The init, after it assembled the sandbox (root pivoted, `/proc` of its PID namespace,
//!    host name, egress), sends one message: a 4-byte big-endian length, then a JSON
//!    [`Request`], with nine or ten descriptors attached (`SCM_RIGHTS`): its stdin, stdout and
//!    stderr, its `net`, `uts`, `ipc`, `cgroup`, `pid` and `mnt` namespaces, then, when it is
//!    the small `kappa-sandbox` helper, its own executable (opened through `/proc/self/exe`).
//! 2. The template forks a **waiter**, which writes itself into the instance's cgroups (host
//!    paths, before anything else), joins the network, UTS, IPC, cgroup and PID namespaces, and
//!    forks the **payload** (the first process of the sandbox's PID namespace after the init).
//!    The payload joins the mount namespace (its root becomes the sandbox's root), leaves the
//!    template's session, takes the stdio descriptors, closes every other descriptor, drops to
//!    the instance's user and group (no supplementary groups, so no capabilities), sets
//!    `no_new_privs`, and only then answers `ok <pid>\n` (its pid inside the namespace) and
//!    runs the runtime's server. Any failed step answers `error <why>\n` and ends it.
//! 3. The waiter, root and outside the sandbox's PID namespace, only waits for the payload and
//!    answers `exit <code>\n` (128+N for a signal). So that it does not keep a copy of the
//!    template's memory for the instance's whole life, it replaces itself, once the payload is
//!    forked, with the helper's small `wait` stage ([`wait`]) when the helper's executable came
//!    with the request: an exec of it with the [`Request`]'s `waiterEnv`, the connection as its stdin and stdout,
//!    the payload's pid (in the waiter's namespace) as its only argument; the payload stays its
//!    child across the exec. The init forwards the stop signals it receives to the payload,
//!    reaps orphans as PID 1, and exits with that code.
//!
//! A spare sandbox (`docs/design/012-pre-forked-spares.md`) runs step 2 ahead of time with a
//! request whose `prefork` is set: its stdin is `/dev/null` (the init's own stdin is the
//! platform's claim socket), and the isolated payload answers `ready <pid>\n` and waits on
//! the connection. The claim is one more message from the init, a 4-byte big-endian length
//! then JSON `{"env": [[key, value], ...]}` ([`Preforked::start`]); the payload takes those
//! variables, answers `ok <pid>\n` and runs the server. End of file before a claim ends it.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::Serialize;

use crate::spec::SandboxSpec;

/// The helper stage the waiter execs into once it has forked the payload.
pub(crate) const WAIT_STAGE: &str = "wait";
/// The namespaces the payload joins, in the order their descriptors are sent.
const NAMESPACES: [&str; 6] = ["net", "uts", "ipc", "cgroup", "pid", "mnt"];
/// How long the init waits for the template's first answer before starting the payload by exec.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest answer line.
const MAX_LINE: usize = 4096;

/// What the template is asked to fork.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    /// `cgroup.procs` files (host paths) the waiter writes itself into first.
    cgroup_procs: &'a [PathBuf],
    /// The payload's user and group.
    user: (u32, u32),
    /// The payload's command line, as it would be exec'd.
    argv: &'a [String],
    /// The payload's whole environment.
    env: &'a [(String, String)],
    /// The payload's working directory inside the sandbox.
    cwd: &'a Path,
    /// The environment the waiter execs the received helper executable with (its `wait`
    /// stage, and the spec's `waiter_env`).
    waiter_env: Vec<(&'a str, &'a str)>,
    /// Fork the payload now and have it wait for its variables (a spare sandbox).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prefork: bool,
}

/// The claim's message to a pre-forked payload.
#[derive(Debug, Serialize)]
struct Start<'a> {
    env: &'a [(String, String)],
}

/// A payload forked by the template: its pid inside the sandbox, and the connection its exit
/// status arrives on.
#[derive(Debug)]
pub(crate) struct Forked {
    pid: Pid,
    conn: UnixStream,
}

/// Connects to the template's control socket; done before the root is pivoted (the socket lives
/// outside the sandbox).
pub(crate) fn connect(path: &Path) -> io::Result<UnixStream> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    conn.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(conn)
}

/// A payload forked ahead of time (a spare sandbox's), isolated and waiting for its variables.
#[derive(Debug)]
pub(crate) struct Preforked {
    pid: Pid,
    conn: UnixStream,
}

/// Asks the template over `conn` to fork the payload `spec` describes into this sandbox. Call
/// from the init, after the sandbox is assembled.
pub(crate) fn fork_payload(mut conn: UnixStream, spec: &SandboxSpec) -> io::Result<Forked> {
    send_request(&conn, spec, false)?;
    let pid = expect(&mut conn, "ok")?;
    // From now on the waiter answers only when the payload ends, however long it runs.
    conn.set_read_timeout(None)?;
    Ok(Forked { pid, conn })
}

/// Asks the template over `conn` to fork the payload of a spare sandbox now: it enters the
/// sandbox as any payload does (cgroups, namespaces, user, `no_new_privs`) and then waits for
/// [`Preforked::start`]. Its stdin is `/dev/null`.
pub(crate) fn prefork(mut conn: UnixStream, spec: &SandboxSpec) -> io::Result<Preforked> {
    send_request(&conn, spec, true)?;
    let pid = expect(&mut conn, "ready")?;
    Ok(Preforked { pid, conn })
}

impl Preforked {
    /// The connection the payload (and its waiter) hold: readable or closed only when they
    /// ended before the claim.
    pub(crate) fn conn(&self) -> &UnixStream {
        &self.conn
    }

    /// Hands the payload its variables: it answers once it has them, then runs the server.
    /// On failure the payload is killed.
    pub(crate) fn start(mut self, env: &[(String, String)]) -> io::Result<Forked> {
        match self.hand_over(env) {
            Ok(()) => Ok(Forked {
                pid: self.pid,
                conn: self.conn,
            }),
            Err(e) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                Err(e)
            }
        }
    }

    fn hand_over(&mut self, env: &[(String, String)]) -> io::Result<()> {
        let json = serde_json::to_vec(&Start { env }).map_err(io::Error::other)?;
        let len = u32::try_from(json.len()).map_err(io::Error::other)?;
        let mut message = Vec::with_capacity(4 + json.len());
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(&json);
        self.conn.write_all(&message)?;
        let pid = expect(&mut self.conn, "ok")?;
        if pid != self.pid {
            return Err(io::Error::other(format!(
                "the payload forked as {} answered as {pid}",
                self.pid
            )));
        }
        self.conn.set_read_timeout(None)
    }
}

/// Reads the template's answer: `<word> <pid>`, or `error <why>`.
fn expect(conn: &mut UnixStream, word: &str) -> io::Result<Pid> {
    let line = read_line(conn)?;
    match line.split_once(' ') {
        Some((w, pid)) if w == word => pid
            .trim()
            .parse::<i32>()
            .map(Pid::from_raw)
            .map_err(|_| io::Error::other(format!("the template answered {line:?}"))),
        Some(("error", why)) => Err(io::Error::other(why.trim().to_owned())),
        _ => Err(io::Error::other(format!("the template answered {line:?}"))),
    }
}

/// Sends the fork request for `spec` (with `prefork`, stdin is `/dev/null`).
fn send_request(conn: &UnixStream, spec: &SandboxSpec, prefork: bool) -> io::Result<()> {
    let user = spec.user.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a forked payload needs a user of its own",
        )
    })?;
    let mut waiter_env = vec![(crate::helper::STAGE_VAR, WAIT_STAGE)];
    waiter_env.extend(
        spec.waiter_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let request = Request {
        cgroup_procs: &spec.cgroup_procs,
        user,
        argv: &spec.argv,
        env: &spec.env,
        cwd: &spec.cwd,
        waiter_env,
        prefork,
    };
    let json = serde_json::to_vec(&request).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    let mut namespaces = Vec::with_capacity(NAMESPACES.len());
    for name in NAMESPACES {
        let file = std::fs::File::open(format!("/proc/self/ns/{name}"))
            .map_err(|e| io::Error::new(e.kind(), format!("opening namespace {name}: {e}")))?;
        namespaces.push(OwnedFd::from(file));
    }
    if let Some(exe) = waiter_program() {
        namespaces.push(exe);
    }
    // A spare's init reads its claim on stdin: its payload gets `/dev/null` instead.
    let null = if prefork {
        Some(std::fs::File::open("/dev/null")?)
    } else {
        None
    };
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let stdin = match &null {
        Some(null) => null.as_fd(),
        None => stdin.as_fd(),
    };
    let mut fds: Vec<BorrowedFd<'_>> = vec![stdin, stdout.as_fd(), stderr.as_fd()];
    fds.extend(namespaces.iter().map(AsFd::as_fd));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(10))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let head = len.to_be_bytes();
    let sent = rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&head), IoSlice::new(&json)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    let whole = head.len() + json.len();
    if sent < whole {
        let rest: Vec<u8> = head.iter().chain(json.iter()).skip(sent).copied().collect();
        (&*conn).write_all(&rest)?;
    }
    Ok(())
}

/// The small sandbox helper's file name (the platform uses the `kappa-sandbox` beside its own
/// executable, `docs/design/009-zygote.md` point 6).
const SMALL_HELPER: &str = "kappa-sandbox";

/// This init's own executable, for the waiter's exec (its `wait` stage), when it is the small
/// helper. When the platform is its own helper, an exec of it would cost more than the waiter
/// staying a fork of the template (the relocated data of the whole platform), so none is sent.
/// `/proc/self/exe` is a magic link: it opens the executable this init runs, whatever the
/// sandbox's root shows.
fn waiter_program() -> Option<OwnedFd> {
    let path = std::fs::read_link("/proc/self/exe").ok()?;
    if path.file_name()? != SMALL_HELPER {
        return None;
    }
    std::fs::File::open("/proc/self/exe")
        .ok()
        .map(OwnedFd::from)
}

/// Reads one `\n`-terminated line (without it); byte by byte, so nothing after it is consumed.
fn read_line(conn: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the template closed the connection without an answer",
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_LINE => line.push(byte[0]),
            Ok(_) => return Err(io::Error::other("the template's answer is too long")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Runs the init's loop for a forked payload: forwards stop signals to it, reaps orphans (the
/// init is PID 1 of the sandbox), and returns the payload's exit code once the waiter reports
/// it. When the waiter goes away without a report, the payload is killed (the sandbox ends).
pub(crate) fn supervise(mut forked: Forked) -> io::Result<i32> {
    let stops = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
    let mut flags = Vec::new();
    for signal in stops {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal as i32, flag.clone())?;
        flags.push((signal, flag));
    }
    // A handler (not SIG_IGN) so that poll is interrupted when an orphan needs reaping.
    let child = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGCHLD, child)?;
    loop {
        for (signal, flag) in &flags {
            if flag.swap(false, Ordering::SeqCst) {
                let _ = kill(forked.pid, *signal);
            }
        }
        reap_orphans();
        let mut fds = [PollFd::new(&forked.conn, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        match read_line(&mut forked.conn) {
            Ok(line) => {
                if let Some(code) = line
                    .strip_prefix("exit ")
                    .and_then(|c| c.trim().parse::<i32>().ok())
                {
                    reap_orphans();
                    return Ok(code);
                }
                // Anything else is not part of the protocol: keep waiting for the report.
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = kill(forked.pid, Signal::SIGKILL);
                return Err(io::Error::new(
                    e.kind(),
                    format!("the payload's waiter went away: {e}"),
                ));
            }
        }
    }
}

/// The helper's `wait` stage: what the template's waiter becomes by exec once it has forked the
/// payload (its only child). Waits for the payload whose pid is the only argument, then writes
/// `exit <code>\n` (128+N for a signal, 125 when there is no such child) to its stdout, the
/// connection to the sandbox's init. The template's waiter ignored SIGTERM, SIGINT and SIGHUP
/// before the exec, and the dispositions stay ignored: stop signals are the payload's.
pub(crate) fn wait() -> io::Result<i32> {
    let _ = nix::sys::prctl::set_name(c"kappa-waiter");
    let mut args = std::env::args().skip(1);
    let pid = match (args.next().map(|a| a.parse::<i32>()), args.next()) {
        (Some(Ok(pid)), None) if pid > 0 => Pid::from_raw(pid),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "expected one argument, the payload's pid",
            ));
        }
    };
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => break crate::helper::SETUP_FAILED,
        }
    };
    let mut out = io::stdout().lock();
    out.write_all(format!("exit {code}\n").as_bytes())?;
    out.flush()?;
    Ok(0)
}

/// Reaps every exited child without blocking (orphans re-parented to the init).
fn reap_orphans() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSliceMut;
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    use super::*;

    fn spec(socket: &Path) -> SandboxSpec {
        SandboxSpec {
            hostname: "kappa".into(),
            root: PathBuf::from("/nonexistent"),
            mounts: Vec::new(),
            symlinks: Vec::new(),
            cgroup_procs: vec![PathBuf::from("/sys/fs/cgroup/x/cgroup.procs")],
            connector: None,
            user: Some((3_000_001, 3_000_001)),
            argv: vec!["/usr/bin/python3".into(), "/runtime/server.py".into()],
            env: vec![("A".into(), "b".into())],
            cwd: PathBuf::from("/work"),
            wait_for_route_ms: None,
            zygote: Some(socket.to_path_buf()),
            claim: false,
            waiter_env: Vec::new(),
        }
    }

    /// A stand-in template: takes one request, then writes `answers`; returns the request's
    /// JSON and how many descriptors came with it.
    fn fake_template(
        listener: UnixListener,
        answers: &'static [&'static str],
    ) -> JoinHandle<(serde_json::Value, usize)> {
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(10))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                &conn,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::empty(),
            )
            .unwrap();
            let mut fds = 0;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds += received.count();
                }
            }
            let mut data = buf[..got.bytes].to_vec();
            let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            while data.len() < 4 + len {
                let n = conn.read(&mut buf).unwrap();
                data.extend_from_slice(&buf[..n]);
            }
            let request = serde_json::from_slice(&data[4..4 + len]).unwrap();
            for answer in answers {
                conn.write_all(answer.as_bytes()).unwrap();
            }
            (request, fds)
        })
    }

    #[test]
    fn a_forked_payload_reports_its_pid_then_its_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let template = fake_template(UnixListener::bind(&path).unwrap(), &["ok 2\n", "exit 7\n"]);
        let spec = spec(&path);
        let forked = fork_payload(connect(&path).unwrap(), &spec).unwrap();
        assert_eq!(forked.pid, Pid::from_raw(2));
        assert_eq!(supervise(forked).unwrap(), 7);
        let (request, fds) = template.join().unwrap();
        // stdio and six namespaces; the test binary is not the small helper, so no executable.
        assert_eq!(fds, 9);
        assert_eq!(
            request["waiterEnv"],
            serde_json::json!([[crate::helper::STAGE_VAR, "wait"]])
        );
        assert_eq!(request["user"], serde_json::json!([3_000_001, 3_000_001]));
        assert_eq!(request["cwd"], "/work");
        assert_eq!(request["argv"][1], "/runtime/server.py");
        assert_eq!(request["cgroupProcs"][0], "/sys/fs/cgroup/x/cgroup.procs");
        assert_eq!(request["env"], serde_json::json!([["A", "b"]]));
    }

    #[test]
    fn a_refusal_or_a_silent_template_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let listener = UnixListener::bind(&path).unwrap();
        let template = fake_template(listener, &["error refusing to run a payload as root\n"]);
        let err = fork_payload(connect(&path).unwrap(), &spec(&path)).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        template.join().unwrap();

        let path = dir.path().join("z2");
        let template = fake_template(UnixListener::bind(&path).unwrap(), &[]);
        let err = fork_payload(connect(&path).unwrap(), &spec(&path)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        template.join().unwrap();

        // No user: never asked at all.
        let mut rootless = spec(&path);
        rootless.user = None;
        let listener = UnixListener::bind(dir.path().join("z3")).unwrap();
        let conn = connect(&dir.path().join("z3")).unwrap();
        assert!(fork_payload(conn, &rootless).is_err());
        drop(listener);
    }

    #[test]
    fn a_waiter_that_goes_away_is_an_error_and_the_payload_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        // The "payload": a child of this test, which supervise must kill.
        let mut payload = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let ok: &'static str = Box::leak(format!("ok {}\n", payload.id()).into_boxed_str());
        let answers: &'static [&'static str] = Box::leak(vec![ok].into_boxed_slice());
        let template = fake_template(UnixListener::bind(&path).unwrap(), answers);
        let forked = fork_payload(connect(&path).unwrap(), &spec(&path)).unwrap();
        template.join().unwrap();
        let err = supervise(forked).unwrap_err();
        assert!(err.to_string().contains("waiter went away"), "{err}");
        let status = payload.wait().unwrap();
        assert!(!status.success(), "{status:?}");
    }
}
