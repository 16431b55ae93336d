"""The Python runtime's template process (a zygote): `python3 server.py --zygote SOCKET`.

The local backend starts one per environment, as root, outside any sandbox, with the server's
implementation loaded. It serves its control socket (in the platform's sockets directory, which
only root can open and no sandbox binds) one request at a time: a sandbox's init, once it has
assembled the sandbox, sends its namespaces, stdio and the payload's user, environment and
command line, and the template forks the payload into that sandbox instead of an exec of
python3. The protocol and the order of the steps are described in crates/sandbox/src/zygote.rs
and docs/design/009-zygote.md. Isolation rests on these steps, in this order:

  waiter (root): join the instance's cgroups (host paths, before anything else), join the
    sandbox's net, uts, ipc, cgroup and pid namespaces, fork the payload, then exec the small
    sandbox helper's `wait` stage (the executable the init sent, if any), which waits for the
    payload and reports its exit, so that no copy of the template's memory stays with the
    instance (without it, wait here);
  payload: join the mount namespace (root and /proc become the sandbox's), leave the template's
    session, take the sandbox's stdio, close every other descriptor, drop supplementary groups,
    gid and uid (all three ids, so no capability is left), set no_new_privs, then answer "ok"
    and run the server. Any failure before "ok" ends the payload: it never runs on with fewer
    restrictions than asked for.

A request with "prefork" (a spare sandbox, docs/design/012-pre-forked-spares.md) runs every step
above ahead of time, before anything of a function exists: the payload, isolated, answers
"ready <pid>" and waits on the connection for the claim (a 4-byte big-endian length, then JSON
{"env": [[key, value], ...]}), takes those variables, answers "ok <pid>" and only then runs the
server. End of file instead of a claim (the spare dropped) ends it.

Only the standard library and ctypes on libc (setns and prctl have no os functions in 3.11).
"""

import ctypes
import json
import os
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
# The descriptors of a request, in order: stdin, stdout, stderr, these namespaces, then the
# small sandbox helper's executable when the init is that helper (what the waiter execs once
# the payload is forked; without it the waiter stays a fork of this template).
NAMESPACES = (CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWCGROUP, CLONE_NEWPID, CLONE_NEWNS)
DESCRIPTORS = len(NAMESPACES) + 4
MAX_REQUEST = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _setns(fd, kind, what):
    _check(_libc.setns(fd, kind), "joining the %s namespace" % what)


def _recv_request(conn):
    """The request's JSON and its descriptors (nine, or ten with the helper's executable)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, DESCRIPTORS)
    if len(fds) not in (DESCRIPTORS - 1, DESCRIPTORS):
        for fd in fds:
            os.close(fd)
        raise ValueError("expected %d or %d descriptors, got %d" % (
            DESCRIPTORS - 1, DESCRIPTORS, len(fds)))
    while len(data) < 4:
        more = conn.recv(65536)
        if not more:
            raise ValueError("truncated request")
        data += more
    (length,) = struct.unpack(">I", data[:4])
    if length > MAX_REQUEST:
        raise ValueError("request too large")
    body = data[4:]
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            raise ValueError("truncated request")
        body += more
    return json.loads(body[:length]), fds


def _answer(conn, line):
    try:
        conn.sendall(line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass


def _payload(conn, request, fds, serve):
    """Runs in the forked payload: the last steps into the sandbox, then the server. Never
    returns."""
    uid, gid = request["user"]
    if uid == 0 or gid == 0:
        raise ValueError("refusing to run a payload as root")
    stdio, namespaces = fds[:3], fds[3:3 + len(NAMESPACES)]
    _setns(namespaces[-1], CLONE_NEWNS, "mount")
    os.setsid()
    for target, fd in enumerate(stdio):
        os.dup2(fd, target, inheritable=True)
    keep = conn.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)
    os.chdir(request["cwd"])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise OSError("the user did not change")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    if _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
        raise OSError("no_new_privs is not set")
    # What an exec of python3 would have: its arguments and script directory, then its
    # environment (a spare's payload waits for it here, isolated already).
    argv = request["argv"]
    sys.argv = list(argv[1:])
    if sys.argv:
        sys.path[0] = os.path.dirname(sys.argv[0])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    env = request["env"]
    if request.get("prefork"):
        _answer(conn, "ready %d" % os.getpid())
        env = _recv_claim(conn)
    os.environ.clear()
    for key, value in env:
        os.environ[key] = value
    _answer(conn, "ok %d" % os.getpid())
    conn.close()
    try:
        serve()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _flush()
        os._exit(code)
    except BaseException:
        import traceback
        traceback.print_exc()
        _flush()
        os._exit(1)
    _flush()
    os._exit(0)


def _recv_claim(conn):
    """A pre-forked payload's wait for its claim: the payload's environment. Ends the process
    without a word when the connection closes first (the spare sandbox was dropped)."""
    conn.settimeout(None)
    data = b""
    length = None
    while length is None or len(data) < 4 + length:
        try:
            more = conn.recv(65536)
        except InterruptedError:
            continue
        except OSError:
            more = b""
        if not more:
            os._exit(0)
        data += more
        if length is None and len(data) >= 4:
            (length,) = struct.unpack(">I", data[:4])
            if length > MAX_REQUEST:
                raise ValueError("claim too large")
    env = json.loads(data[4:4 + length])["env"]
    return [(str(k), str(v)) for k, v in env]


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


def _waiter(conn, request, fds, serve):
    """Runs in the forked waiter (root): cgroups, namespaces, then the payload's fork; reports
    its exit. Never returns."""
    code = 125
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        # The template's own output goes to the platform: the waiter (and the payload after it)
        # writes to the instance's log instead, and holds nothing of the template's.
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target, inheritable=True)
        me = str(os.getpid())
        for procs in request["cgroupProcs"]:
            with open(procs, "w") as f:
                f.write(me)
        names = ("network", "UTS", "IPC", "cgroup", "PID")
        for fd, kind, name in zip(fds[3:], NAMESPACES[:-1], names):
            _setns(fd, kind, name)
        pid = os.fork()
        if pid == 0:
            try:
                _payload(conn, request, fds, serve)
            except BaseException as e:
                _answer(conn, "error %s" % (e,))
            os._exit(125)
        exe = fds[3 + len(NAMESPACES)] if len(fds) == DESCRIPTORS else None
        for fd in fds[:3 + len(NAMESPACES)]:
            os.close(fd)
        # Stop signals are the payload's (the sandbox's init forwards them); the waiter only
        # reports how it ended. Ignored dispositions survive the exec below.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if exe is not None:
            try:
                _exec_wait(conn, exe, pid, request)
            except (OSError, KeyError, TypeError, ValueError) as e:
                # Waiting here works the same, only with a copy of the template's memory.
                sys.stderr.write("kappa python template: waiting without the helper: %s\n" % e)
            os.close(exe)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                status = None
                break
            except InterruptedError:
                continue
        if status is not None:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code
        _answer(conn, "exit %d" % code)
    except BaseException as e:
        _answer(conn, "error %s" % (e,))
    os._exit(0)


def _exec_wait(conn, exe, pid, request):
    """Replaces the waiter with the helper's `wait` stage (crates/sandbox/src/zygote.rs): the
    payload stays its child, the connection becomes its stdin and stdout, its stderr stays the
    instance's. Returns only when the exec failed (with the descriptors as they were)."""
    env = dict(request["waiterEnv"])
    os.set_inheritable(exe, False)
    saved = os.dup(0), os.dup(1)
    try:
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        os.execve(exe, ["kappa-waiter", str(pid)], env)
    except OSError:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        raise
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run(path, serve):
    """The template's loop: serves fork requests on the Unix socket `path` until the platform
    goes away."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "setting the parent-death signal")
    if os.getppid() == 1:
        os._exit(0)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, _reap)
    sys.stdout.write("kappa python template ready on %s\n" % path)
    sys.stdout.flush()
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        # An init sends its request at once; one that stalls must not hold up the others.
        conn.settimeout(5.0)
        try:
            request, fds = _recv_request(conn)
        except (OSError, ValueError) as e:
            _answer(conn, "error bad request: %s" % e)
            conn.close()
            continue
        _flush()
        try:
            pid = os.fork()
        except OSError as e:
            _answer(conn, "error cannot fork: %s" % e)
            pid = None
        if pid == 0:
            listener.close()
            _waiter(conn, request, fds, serve)
        for fd in fds:
            os.close(fd)
        conn.close()


def _reap(_signum, _frame):
    """Reaps the waiters that ended (each lives as long as its payload)."""
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if done == 0:
            return
