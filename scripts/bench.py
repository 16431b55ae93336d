#!/usr/bin/env python3
"""Kappa's benchmark: prints Kappa's figures side by side with baselines measured in the same run.

  (a) proxy throughput and latency: wrk through the Kappa router, through nginx `proxy_pass`,
      through HAProxy (`http-reuse always`, 2 threads), and
      directly to the same upstream (an nginx instance run *as a Kappa function*, fast enough that
      the proxy is the bottleneck); then the router's instructions per request
      (`valgrind --tool=callgrind` on `kappa up`, `router_instructions`);
  (b) first-request latency of never-invoked Python functions with a warm pool and with
      `poolsize 0`, next to a bare `python3 -c pass` start; and in the sandbox again with the
      Python template (zygote) on and off, with the PSS of idle specialized instances;
  (c) warm request latency of a Python function through the router and directly.
  (a)-(c) run twice in the same run: with instances unsandboxed (`--sandbox none`, which the
      direct and nginx baselines need: they reach the upstream on a host port) and in the
      default built-in sandbox (reached only through its connector), so the cost of isolation
      on a warm request and on a cold start is printed side by side.
  (d) message queue: messages per second through a trivial Python function via NATS JetStream
      and via Kafka (a `tansu` broker), a message-queue trigger with a response topic, at
      maxConcurrency 1 and 64.
  (e) routes at scale: N functions and N routes created through the API (N = 10,000, or
      $KAPPA_BENCH_ROUTES; 1,000 with --quick): the time to create one at the start and at the
      end, the platform's RSS per function and per route (each read once the platform has
      settled after the phase: no CPU used for 1 s), list and watch times, and the first
      and last route loaded with wrk next to the same route at 10 routes.
  (f) tracing: router throughput (32 connections) and warm-request latency (1 connection) to
      the nginx upstream function with traces off, and exported (OTLP/HTTP to a local sink that
      discards them) with the sampler at 100% and at 1%, side by side.

  (g) adaptive warm pools: a replayed bursty trace (bursts of concurrent first requests to new
      functions, one environment at a time, separated by idle gaps) against fixed pools and
      against adaptive pools under the same pool memory budget; prints the cold starts (pool
      misses: requests that waited for an instance start, from the executor's metrics).

Usage: scripts/bench.sh [--quick]   (builds the release binary, then runs this script)
Needs: nginx, haproxy, wrk, nats-server, tansu (scripts/install-deps.sh and bench.sh install
them). Uses free loopback ports only. `--mq-only` runs only (d), `--scale-only` only (e), `--tracing-only`
only (f), `--pools-only` only (g), `--zygote-only` only the zygote part of (b), `--warm-only`
only the warm-pool first request of (b) beside its baselines (`--breakdown`: and where its time
goes, from the spans of a traced run), `--proxy-only` only (a), unsandboxed (with
KAPPA_ROUTER_THREADS passed on to `kappa up`).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAPPA = os.environ.get("KAPPA_BIN") or os.path.join(ROOT, "target", "release", "kappa")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"
# The interpreter the local backend runs the Python runtime with (so the baseline is the same).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else (shutil.which("python3") or "python3")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def http_get(port, path, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Kappa:
    def __init__(self, workdir, extra=(), env=None, wrap=(), start_limit=60.0):
        self.data = os.path.join(workdir, "kappa-data")
        self.router, self.api, self.admin = free_port(), free_port(), free_port()
        self.log = open(os.path.join(workdir, "kappa-up.log"), "w")
        env = dict(os.environ, RUST_LOG="warn", **(env or {}))
        self.proc = subprocess.Popen(
            [*wrap, KAPPA, "up", "--no-example", "--data-dir", self.data,
             "--router-addr", f"127.0.0.1:{self.router}", "--api-addr", f"127.0.0.1:{self.api}",
             "--admin-addr", f"127.0.0.1:{self.admin}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for("kappa up", lambda: http_get(self.admin, "/readyz")[0] == 200
                 and os.path.exists(os.path.join(self.data, "client.json")), start_limit)

    def cli(self, *args):
        env = dict(os.environ, KAPPA_DATA_DIR=self.data)
        out = subprocess.run([KAPPA, *args], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"kappa {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def endpoints(self):
        with open(os.path.join(self.data, "token")) as f:
            token = f.read().strip()
        status, body = http_get(self.admin, "/debug/endpoints", {"Authorization": f"Bearer {token}"})
        return json.loads(body) if status == 200 else {}

    def instance_port(self, function):
        """The port of the first specialized instance of `function` (from /debug/endpoints)."""
        data = self.endpoints()
        entries = data.get("functions", []) if isinstance(data, dict) else data
        for entry in entries:
            if entry.get("function") == f"default/{function}" and entry.get("endpoints"):
                addr = entry["endpoints"][0]["addr"]
                # A sandboxed instance has no host port (`sandbox:<port>:<connector>`).
                return None if addr.startswith("sandbox:") else int(addr.rsplit(":", 1)[1])
        return None

    def metrics(self):
        with open(os.path.join(self.data, "token")) as f:
            token = f.read().strip()
        # The API server's /metrics carries the pool manager's metrics.
        status, body = http_get(self.api, "/metrics", {"Authorization": f"Bearer {token}"})
        if status != 200:
            sys.exit(f"GET /metrics answered {status}")
        return body.decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk(url, connections, seconds, threads=2):
    out = subprocess.run(
        [WRK, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")
    return {"rps": rps, "p50_us": pct(50), "p99_us": pct(99)}


NGINX_UPSTREAM = """worker_processes 2;
pid up-$PORT.pid;
error_log /dev/stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path .; proxy_temp_path .; fastcgi_temp_path .; uwsgi_temp_path .; scgi_temp_path .;
  server {
    listen 127.0.0.1:$PORT;
    location = /healthz { return 200 "ok"; }
    location = /v2/specialize { return 200 "{}"; }
    location / { default_type text/plain; return 200 "hello\\n"; }
  }
}
"""


def nginx_proxy_conf(listen, upstream_port, workdir):
    return f"""worker_processes 2;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  upstream fn {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://fn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf(listen, upstream_port):
    """HAProxy in front of the same upstream: 2 threads, server connections kept and shared
    between client connections (`http-reuse always`)."""
    return f"""global
  nbthread 2
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend bench
  bind 127.0.0.1:{listen}
  default_backend fn
backend fn
  server up 127.0.0.1:{upstream_port} maxconn 64
"""


def deploy_upstream(kappa, workdir):
    """Deploys the nginx upstream of (a) and (f) as function `upstream` behind route `/up`."""
    conf = os.path.join(workdir, "upstream.conf.tmpl")
    with open(conf, "w") as f:
        f.write(NGINX_UPSTREAM)
    # The instance's working directory is its own writable scratch space.
    command = (f"sed \"s/\\$PORT/$PORT/g\" {conf} > up.conf && "
               f"exec {NGINX} -c \"$PWD/up.conf\" -p \"$PWD\" -g 'daemon off;'")
    kappa.cli("env", "create", "--name", "static", "--image", "static", "--command", command, "--poolsize", "1")
    kappa.cli("fn", "create", "--name", "upstream", "--env", "static", "--code", conf,
              "--concurrency", "1", "--rpp", "10000")
    kappa.cli("route", "create", "--url", "/up", "--function", "upstream")
    wait_for("the upstream function", lambda: http_get(kappa.router, "/up")[0] == 200, 120)


# Requests the instruction count is taken over (after CALLGRIND_WARMUP unmeasured ones).
CALLGRIND_REQUESTS = 2000
CALLGRIND_WARMUP = 200


def router_instructions(env=None, requests=CALLGRIND_REQUESTS):
    """Instructions the `kappa up` process runs per warm keep-alive `GET /up` through the
    router to the nginx upstream function (unsandboxed): `valgrind --tool=callgrind` on the
    process, counters zeroed after a warm-up and dumped after `requests` requests on one
    connection, the total divided by `requests`. Independent of the machine's load, unlike
    every timing here. `env` is added to the process's environment (e.g. tracing settings)."""
    workdir = tempfile.mkdtemp(prefix="kappa-bench-callgrind-")
    out = os.path.join(workdir, "callgrind.out")
    wrap = [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    kappa = Kappa(workdir, extra=["--sandbox", "none"], env=env, wrap=wrap, start_limit=600.0)
    try:
        deploy_upstream(kappa, workdir)
        conn = http.client.HTTPConnection("127.0.0.1", kappa.router, timeout=60)

        def get(n):
            for _ in range(n):
                conn.request("GET", "/up")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    sys.exit(f"GET /up answered {resp.status} under callgrind")

        get(CALLGRIND_WARMUP)
        pid = str(kappa.proc.pid)
        subprocess.run([CALLGRIND_CONTROL, "-z", pid], check=True, capture_output=True)
        get(requests)
        subprocess.run([CALLGRIND_CONTROL, "-d", pid], check=True, capture_output=True)
        conn.close()
        dumps = [f for f in os.listdir(workdir) if f.startswith("callgrind.out.")]
        if not dumps:
            sys.exit("callgrind wrote no dump")
        with open(os.path.join(workdir, sorted(dumps)[-1])) as f:
            total = next(int(l.split()[1]) for l in f if l.startswith(("totals:", "summary:")))
        return total / requests
    finally:
        kappa.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))] if xs else float("nan")


def first_request_ms(port, path):
    t0 = time.perf_counter()
    status, body = http_get(port, path, timeout=60)
    elapsed = (time.perf_counter() - t0) * 1000
    if status != 200:
        sys.exit(f"GET {path} answered {status}: {body[:500]!r}")
    return elapsed


def bare_python_ms(runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([PYTHON, "-c", "pass"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def bare_node_ms(runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["node", "-e", "0"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class RawNats:
    """A minimal NATS protocol client (publish, and count messages on one subject) so the
    benchmark needs no Python NATS library."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\nPING\r\n')
        while self._line() != b"PONG":
            pass

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("NATS connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def publish_many(self, subject, payloads):
        out = bytearray()
        for p in payloads:
            out += b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(p), p)
        out += b"PING\r\n"
        self.sock.sendall(bytes(out))

    def subscribe(self, subject):
        self.sock.sendall(b"SUB %s 1\r\nPING\r\n" % subject.encode())
        while self._line() != b"PONG":
            pass

    def count(self, n, limit=300.0):
        """The monotonic arrival times of the next `n` messages of the subscription."""
        times = []
        deadline = time.monotonic() + limit
        self.sock.settimeout(limit)
        while len(times) < n and time.monotonic() < deadline:
            line = self._line()
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                size = int(line.split()[-1])
                while len(self.buf) < size + 2:
                    self.buf += self.sock.recv(65536)
                self.buf = self.buf[size + 2:]
                times.append(time.monotonic())
            elif line == b"PING":
                self.sock.sendall(b"PONG\r\n")
        return times


TANSU = shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def zigzag(n):
    """A Kafka varint (zigzag-encoded)."""
    v = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class RawKafka:
    """A minimal Kafka producer (Produce v3, one record batch v2 per request, partition 0) so the
    benchmark needs no Python Kafka library."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.correlation = 0

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("Kafka connection closed")
            buf += chunk
        return buf

    def produce(self, topic, payloads):
        now = int(time.time() * 1000)
        records = bytearray()
        for i, p in enumerate(payloads):
            body = (b"\x00" + zigzag(0) + zigzag(i) + zigzag(-1) + zigzag(len(p)) + p + zigzag(0))
            records += zigzag(len(body)) + body
        after_crc = (struct.pack(">hiqqqhii", 0, len(payloads) - 1, now, now, -1, -1, -1, len(payloads))
                     + bytes(records))
        batch_tail = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
        batch = struct.pack(">qi", 0, len(batch_tail)) + batch_tail
        name = topic.encode()
        self.correlation += 1
        body = (struct.pack(">hhih", 0, 3, self.correlation, 5) + b"bench"
                + struct.pack(">hhii", -1, -1, 30000, 1) + struct.pack(">h", len(name)) + name
                + struct.pack(">iii", 1, 0, len(batch)) + batch)
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", self._recv(4))[0]
        reply = self._recv(size)
        # correlation id, 1 topic (name), 1 partition: index, error code
        name_len = struct.unpack(">h", reply[8:10])[0]
        error = struct.unpack(">h", reply[10 + name_len + 4 + 4:10 + name_len + 4 + 4 + 2])[0]
        if error != 0:
            raise OSError(f"producing to {topic}: Kafka error code {error}")


def settled_ok(kappa, trigger):
    """`kappa_triggers_messages_total{result="ok"}` of `trigger` (namespace default)."""
    status, body = http_get(kappa.api, "/metrics")
    if status != 200:
        return 0
    text = body.decode() if isinstance(body, bytes) else body
    for line in text.splitlines():
        if (line.startswith("kappa_triggers_messages_total{") and f'trigger="default/{trigger}"' in line
                and 'result="ok"' in line):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def proc_tree(root):
    """`root` and its descendants: {pid: comm}."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents[int(entry)] = (ppid, comm)
    tree, frontier = {root: parents.get(root, (0, "?"))[1]}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, comm) in parents.items():
            if ppid == parent and pid not in tree:
                tree[pid] = comm
                frontier.append(pid)
    return tree


def cpu_ns(pid):
    """CPU time of process `pid` so far (ns; utime + stime from /proc/PID/stat, so threads that
    ended count too), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def cpu_by_role(kappa_pid, broker_pid, bench_pid):
    """{pid: (role, CPU ns so far)} of the platform's process (router, triggers, executor), the
    function's instances (its descendants: sandbox, runtime), the broker and this script."""
    out = {kappa_pid: ("kappa", cpu_ns(kappa_pid)), broker_pid: ("broker", cpu_ns(broker_pid)),
           bench_pid: ("bench client", cpu_ns(bench_pid))}
    for pid in proc_tree(kappa_pid):
        if pid != kappa_pid:
            out[pid] = ("instances", cpu_ns(pid))
    return out


def cpu_per_message(cpu0, cpu1, n):
    """µs of CPU per message by role between two `cpu_by_role` readings, process by process (an
    instance that started meanwhile counts from 0, one that ended is left out)."""
    per = {"kappa": 0.0, "instances": 0.0, "broker": 0.0, "bench client": 0.0}
    for pid, (role, ns) in cpu1.items():
        per[role] += (ns - cpu0.get(pid, (role, 0))[1]) / n / 1000
    return per


def bench_mq(quick):
    """(d): messages per second through a trivial function at maxConcurrency 1 and 64, through
    NATS JetStream and through Kafka (tansu), in the same run."""
    if not os.path.exists(NATS_SERVER):
        sys.exit("missing nats-server: run scripts/install-deps.sh")
    with_kafka = os.path.exists(TANSU)
    if not with_kafka:
        print("  (tansu missing, run scripts/install-deps.sh: the Kafka rows are left out)",
              file=sys.stderr, flush=True)
    workdir = tempfile.mkdtemp(prefix="kappa-bench-mq-")
    nats_port, kafka_port = free_port(), free_port()
    nats = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", os.path.join(workdir, "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener = f"tcp://127.0.0.1:{kafka_port}"
    kafka = subprocess.Popen([TANSU, "broker", "--listener-url", listener, "--advertised-listener-url",
                              listener, "--storage-engine", "memory://tansu/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if with_kafka else None
    results, cpu = {}, {}
    kappa = None
    try:
        wait_for("nats-server", lambda: socket.create_connection(("127.0.0.1", nats_port)).close() or True)
        if with_kafka:
            wait_for("tansu", lambda: socket.create_connection(("127.0.0.1", kafka_port)).close() or True)
        kappa = Kappa(workdir, ["--nats-url", f"nats://127.0.0.1:{nats_port}"]
                      + (["--kafka-url", f"kafka://127.0.0.1:{kafka_port}"] if with_kafka else []))
        code = os.path.join(ROOT, "functions", "testdata", "python", "mq.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        kappa.cli("fn", "create", "--name", "echo", "--env", "python", "--code", code,
                  "--entrypoint", "mq.echo", "--rpp", "16", "--concurrency", "4")
        n = 1000 if quick else 5000
        warm = 200

        def trigger(name, mqtype, conc):
            kappa.cli("mqt", "create", "--name", name, "--function", "echo", "--mqtype", mqtype,
                      "--topic", f"{name}-in", "--resptopic", f"{name}-out", "--maxconcurrency", str(conc))
            wait_for(f"trigger {name}", lambda: json.loads(kappa.cli("mqt", "get", name, "-o", "json"))
                     ["status"].get("state") == "ready")

        for conc in (1, 64):
            # JetStream: the rate at which replies arrive on the response subject.
            name = f"bench{conc}"
            trigger(name, "nats-jetstream", conc)
            sub, pub = RawNats(nats_port), RawNats(nats_port)
            sub.subscribe(f"{name}-out")
            pub.publish_many(f"{name}-in", [b'{"warm":%d}' % i for i in range(warm)])
            if len(sub.count(warm)) < warm:
                sys.exit(f"warm-up of {name} did not complete")
            cpu0 = cpu_by_role(kappa.proc.pid, nats.pid, os.getpid())
            t0 = time.monotonic()
            pub.publish_many(f"{name}-in", [b'{"id":%d}' % i for i in range(n)])
            times = sub.count(n)
            if len(times) < n:
                sys.exit(f"{name}: only {len(times)} of {n} replies")
            results[("NATS JetStream", conc)] = n / (times[-1] - t0)
            cpu1 = cpu_by_role(kappa.proc.pid, nats.pid, os.getpid())
            cpu[("NATS JetStream", conc)] = cpu_per_message(cpu0, cpu1, n)

            if not with_kafka:
                continue
            # Kafka: the rate at which messages are settled (reply produced to respTopic and
            # acknowledged by the broker, then the message counted `ok`).
            name = f"kbench{conc}"
            trigger(name, "kafka", conc)
            producer = RawKafka(kafka_port)
            producer.produce(f"{name}-in", [b'{"warm":%d}' % i for i in range(warm)])
            wait_for(f"warm-up of {name}", lambda: settled_ok(kappa, name) >= warm, limit=300)
            cpu0 = cpu_by_role(kappa.proc.pid, kafka.pid, os.getpid())
            t0 = time.monotonic()
            for chunk in range(0, n, 1000):
                producer.produce(f"{name}-in", [b'{"id":%d}' % i for i in range(chunk, min(n, chunk + 1000))])
            deadline = time.monotonic() + 300
            while settled_ok(kappa, name) < warm + n:
                if time.monotonic() > deadline:
                    sys.exit(f"{name}: only {settled_ok(kappa, name) - warm} of {n} settled")
                time.sleep(0.005)
            results[("Kafka (tansu)", conc)] = n / (time.monotonic() - t0)
            cpu1 = cpu_by_role(kappa.proc.pid, kafka.pid, os.getpid())
            cpu[("Kafka (tansu)", conc)] = cpu_per_message(cpu0, cpu1, n)
    finally:
        if kappa:
            kappa.stop()
        for proc in (nats, kafka):
            if proc:
                proc.terminate()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"(d) message queue: a trivial Python function, {n} messages, request and reply (respTopic), "
          "at least once")
    print(f"{'broker':<18}{'maxConcurrency':<16}{'messages/s':>12}")
    for (broker, conc), rate in results.items():
        print(f"{broker:<18}{conc:<16}{rate:>12,.0f}")
    print("(aims: JetStream >= 20,000 messages/s at maxConcurrency 64, >= 4,000 at 1)")
    print("CPU per message (us) while the messages ran: the platform's process (router, triggers,"
          " executor), the function's instances, the broker, this script's client (utime + stime"
          " in clock ticks: coarse for short runs; scripts/mq_ab.py measures 20,000 messages)")
    roles = ["kappa", "instances", "broker", "bench client"]
    print(f"{'broker':<18}{'maxConcurrency':<16}" + "".join(f"{r:>14}" for r in roles))
    for (broker, conc), by_role in cpu.items():
        print(f"{broker:<18}{conc:<16}" + "".join(f"{by_role[r]:>14.1f}" for r in roles))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settled_rss_kib(pid, quiet_s=1.0, limit_s=120.0):
    """RSS once the process has caught up with what it was sent (no CPU used for `quiet_s`,
    at most `limit_s`): the memory a phase leaves, not the work still queued from it."""
    deadline = time.monotonic() + limit_s
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_ticks(pid)
        if now - last <= 1:
            break
        last = now
    return rss_kib(pid)


class Api:
    """A keep-alive client of the Kappa API (the token from the data directory)."""

    def __init__(self, kappa):
        with open(os.path.join(kappa.data, "token")) as f:
            self.headers = {"Authorization": f"Bearer {f.read().strip()}",
                            "Content-Type": "application/json"}
        self.port = kappa.api
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=None if body is None else json.dumps(body),
                          headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            sys.exit(f"{method} {path} answered {resp.status}: {data[:500]!r}")
        return json.loads(data) if data else None

    def timed(self, method, path, body=None):
        t0 = time.perf_counter()
        self.call(method, path, body)
        return (time.perf_counter() - t0) * 1000


def template(obj):
    """A stored resource as a body to create another one from (metadata: name only)."""
    body = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    body["metadata"] = {"name": obj["metadata"]["name"]}
    return body


def watch_latency_ms(api, route_body):
    """Time from sending a create to its event on a watch stream opened just before."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    conn.request("GET", "/v1/watch?kinds=HttpTrigger", headers=api.headers)
    resp = conn.getresponse()
    t0 = time.perf_counter()
    api.call("POST", "/v1/httptriggers", route_body)
    name = route_body["metadata"]["name"]
    while True:
        line = resp.readline()
        if not line:
            sys.exit("the watch stream ended")
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("object", {}).get("metadata", {}).get("name") == name:
            elapsed = (time.perf_counter() - t0) * 1000
            conn.close()
            return elapsed


def bench_scale(n, seconds):
    """(e): N functions and N routes created through the API: creation time at the start and
    the end, the platform's RSS per function and per route, list and watch times, and the
    first and last route loaded with wrk next to the same figures at 10 routes."""
    workdir = tempfile.mkdtemp(prefix="kappa-bench-scale-")
    kappa = Kappa(workdir, extra=["--sandbox", "none"])
    out = {"n": n}
    try:
        conf = os.path.join(workdir, "upstream.conf.tmpl")
        with open(conf, "w") as f:
            f.write(NGINX_UPSTREAM)
        command = (f"sed \"s/\\$PORT/$PORT/g\" {conf} > up.conf && "
                   f"exec {NGINX} -c \"$PWD/up.conf\" -p \"$PWD\" -g 'daemon off;'")
        kappa.cli("env", "create", "--name", "static", "--image", "static", "--command", command,
                  "--poolsize", "2")
        kappa.cli("fn", "create", "--name", "f0", "--env", "static", "--code", conf,
                  "--concurrency", "1", "--rpp", "10000")
        kappa.cli("route", "create", "--name", "r0", "--url", "/r/0", "--function", "f0")
        api = Api(kappa)
        fn = template(api.call("GET", "/v1/functions/f0"))
        route = template(api.call("GET", "/v1/httptriggers/r0"))

        def fn_body(i):
            return dict(fn, metadata={"name": f"f{i}"})

        def route_body(i, name=None):
            body = json.loads(json.dumps(route))
            body["metadata"] = {"name": name or f"r{i}"}
            body["spec"]["relativeurl"] = f"/r/{i}"
            body["spec"]["functionref"]["name"] = f"f{i}"
            return body

        # The 10-route figures.
        for i in range(1, 10):
            api.call("POST", "/v1/functions", fn_body(i))
            api.call("POST", "/v1/httptriggers", route_body(i))
        wait_for("route /r/0", lambda: http_get(kappa.router, "/r/0")[0] == 200)
        wrk(f"http://127.0.0.1:{kappa.router}/r/0", 32, 1)
        out["at10"] = {"a32": wrk(f"http://127.0.0.1:{kappa.router}/r/0", 32, seconds),
                       "a1": wrk(f"http://127.0.0.1:{kappa.router}/r/0", 1, seconds, threads=1)}

        # RSS is read once the platform has settled after each phase, so work it still had
        # queued for the functions (watchers, the pool manager) is not counted for the routes.
        rss0 = settled_rss_kib(kappa.proc.pid)
        fn_ms = [api.timed("POST", "/v1/functions", fn_body(i)) for i in range(10, n)]
        rss1 = settled_rss_kib(kappa.proc.pid)
        route_ms = [api.timed("POST", "/v1/httptriggers", route_body(i)) for i in range(10, n)]
        out["load"] = os.getloadavg()
        rss2 = settled_rss_kib(kappa.proc.pid)
        print(f"  (created {n} functions and {n} routes; measuring)", file=sys.stderr, flush=True)
        k = max(1, min(100, len(route_ms) // 10))
        out["fn_create_first"], out["fn_create_last"] = median(fn_ms[:k]), median(fn_ms[-k:])
        out["route_create_first"], out["route_create_last"] = median(route_ms[:k]), median(route_ms[-k:])
        out["route_create_total_s"] = sum(route_ms) / 1000
        out["fn_create_total_s"] = sum(fn_ms) / 1000
        created = max(1, n - 10)
        out["rss_per_fn_kib"] = (rss1 - rss0) / created
        out["rss_per_route_kib"] = (rss2 - rss1) / created
        out["rss_mib"] = rss2 / 1024
        out["list_routes_ms"] = median([api.timed("GET", "/v1/httptriggers") for _ in range(3)])
        out["list_fns_ms"] = median([api.timed("GET", "/v1/functions") for _ in range(3)])
        out["watch_ms"] = median([watch_latency_ms(api, dict(route_body(0, f"w{j}"),
                                                             spec=dict(route_body(0)["spec"], relativeurl=f"/w/{j}")))
                                  for j in range(5)])
        last = n - 1
        for label, path in (("first", "/r/0"), ("last", f"/r/{last}")):
            url = f"http://127.0.0.1:{kappa.router}{path}"
            wait_for(f"route {path}", lambda: http_get(kappa.router, path)[0] == 200)
            wrk(url, 32, 1)
            out[label] = {"a32": wrk(url, 32, seconds), "a1": wrk(url, 1, seconds, threads=1)}
    finally:
        kappa.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"(e) routes at scale: {n} functions and {n} routes created through the API "
          "(one nginx-upstream function behind each route)")
    print(f"  create one function: {out['fn_create_first']:.2f} ms at the start, "
          f"{out['fn_create_last']:.2f} ms at the end ({out['fn_create_total_s']:.1f} s in all)")
    print(f"  create one route:    {out['route_create_first']:.2f} ms at the start, "
          f"{out['route_create_last']:.2f} ms at the end ({out['route_create_total_s']:.1f} s in all; "
          "aim: <= 2 ms, flat)")
    print(f"  load average when the creates ended: {out['load'][0]:.1f} / {out['load'][1]:.1f} / "
          f"{out['load'][2]:.1f} on {os.cpu_count()} cores")
    print(f"  platform RSS, each phase settled: {out['rss_per_fn_kib']:.2f} KiB per function, "
          f"{out['rss_per_route_kib']:.2f} KiB per route (aim: <= 1 KiB), {out['rss_mib']:.0f} MiB in all")
    print(f"  list {n} routes: {out['list_routes_ms']:.0f} ms, list {n} functions: {out['list_fns_ms']:.0f} ms; "
          f"a route create seen on a watch: {out['watch_ms']:.2f} ms")
    print(f"  {'route':<22}{'32 conns req/s':>16}{'vs 10 routes':>14}{'1 conn p50':>13}{'vs 10 routes':>14}")
    base = out["at10"]
    for label, r in (("first, at 10 routes", base), (f"first, at {n}", out["first"]), (f"last, at {n}", out["last"])):
        print(f"  {label:<22}{r['a32']['rps']:>16,.0f}{r['a32']['rps'] / base['a32']['rps']:>13.2f}x"
              f"{r['a1']['p50_us']:>11.0f}us{r['a1']['p50_us'] / base['a1']['p50_us']:>13.2f}x")
    print("  (aim: p50 <= 1.1x the 10-route figure)")
    return out
class OtlpSink:
    """A local OTLP/HTTP receiver that reads and discards every export (`POST /v1/traces`)."""

    def __init__(self):
        import http.server
        import threading

        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.exports = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def bench_tracing(seconds):
    """(f): the nginx upstream function through the router with traces off and on."""
    results = {}
    for label, sampler in (("traces off", None), ("traces on, sampler 100%", "1"),
                           ("traces on, sampler 1%", "0.01")):
        workdir = tempfile.mkdtemp(prefix="kappa-bench-tracing-")
        sink = OtlpSink() if sampler else None
        env = {}
        if sink:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
                   "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                   "OTEL_TRACES_SAMPLER_ARG": sampler}
        kappa = Kappa(workdir, extra=["--sandbox", "none"], env=env)
        try:
            deploy_upstream(kappa, workdir)
            url = f"http://127.0.0.1:{kappa.router}/up"
            wrk(url, 32, 1)
            r32 = wrk(url, 32, seconds)
            r1 = wrk(url, 1, seconds, threads=1)
            time.sleep(1.5)
            results[label] = (r32, r1, sink.exports if sink else 0)
        finally:
            kappa.stop()
            if sink:
                sink.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    print("(f) tracing: the nginx upstream function through the router, unsandboxed, keep-alive")
    print(f"{'case':<28}{'32 conns req/s':>16}{'p50':>10}{'p99':>10}{'1 conn p50':>13}{'p99':>10}{'OTLP exports':>14}")
    for label, (r32, r1, exports) in results.items():
        print(f"{label:<28}{r32['rps']:>16,.0f}{r32['p50_us']:>8.0f}us{r32['p99_us']:>8.0f}us"
              f"{r1['p50_us']:>11.0f}us{r1['p99_us']:>8.0f}us{exports:>14}")
    off = results["traces off"][0]["rps"]
    for label in ("traces on, sampler 100%", "traces on, sampler 1%"):
        print(f"throughput, {label} / traces off: {results[label][0]['rps'] / off:.2f}x")
# (g): the trace. Environments are bursty one at a time (a phase each); every burst is BURST
# concurrent first requests, one to each of BURST functions never invoked before; bursts are
# IDLE_GAP seconds apart, phases PHASE_GAP (about two demand half-lives). Deterministic: the
# same trace for both pool policies.
POOL_ENVS = 3
POOL_PHASES = 1          # each environment's phase comes this many times, in turn
BURSTS_PER_PHASE = 4
BURST = 6
IDLE_GAP = 4.0
PHASE_GAP = 60.0
POOL_SIZE = 2            # the fixed pools' poolsize, and where the adaptive ones start
POOL_MEMORY_MI = 64      # each environment's memory limit
POOL_BUDGET_MI = POOL_ENVS * POOL_SIZE * POOL_MEMORY_MI  # what the fixed pools hold


def pool_trace():
    """[(environment index, [function names])] in replay order."""
    trace, n = [], 0
    for _ in range(POOL_PHASES):
        for e in range(POOL_ENVS):
            for _ in range(BURSTS_PER_PHASE):
                trace.append((e, [f"t{n + k}" for k in range(BURST)]))
                n += BURST
    return trace


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def bench_pools(policy, workdir):
    """Replays the trace against `kappa up` with `policy` pools; returns the cold starts, the
    client-measured first-request latencies and the pool sizes seen after each burst."""
    import concurrent.futures
    kappa = Kappa(workdir, extra=["--pool-memory-budget", f"{POOL_BUDGET_MI}Mi"])
    hello = os.path.join(ROOT, "functions", "examples", "hello", "hello.py")
    trace = pool_trace()
    out = {"latency": [], "sizes": []}
    try:
        for e in range(POOL_ENVS):
            flags = ["--pool-policy", "adaptive"] if policy == "adaptive" else []
            kappa.cli("env", "create", "--name", f"e{e}", "--image", "python", "--poolsize",
                      str(POOL_SIZE), "--maxmemory", str(POOL_MEMORY_MI), *flags)
        for e, names in trace:
            for name in names:
                kappa.cli("fn", "create", "--name", name, "--env", f"e{e}", "--code", hello)
                kappa.cli("route", "create", "--url", f"/{name}", "--function", name)
        time.sleep(3)  # the pools fill
        before = metric_sum(kappa.metrics(), "kappa_executor_pool_takes_total", result="miss")
        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            for k, (e, names) in enumerate(trace):
                if k and trace[k - 1][0] != e:
                    time.sleep(PHASE_GAP - IDLE_GAP)
                out["latency"] += list(pool.map(lambda n: first_request_ms(kappa.router, f"/{n}"), names))
                time.sleep(IDLE_GAP)
                text = kappa.metrics()
                out["sizes"].append([int(metric_sum(text, "kappa_executor_pool_size", environment=f"default/e{i}"))
                                     for i in range(POOL_ENVS)])
        text = kappa.metrics()
        out["cold"] = int(metric_sum(text, "kappa_executor_pool_takes_total", result="miss") - before)
        out["takes"] = int(metric_sum(text, "kappa_executor_pool_takes_total"))
    finally:
        kappa.stop()
    return out


def report_pools(runs):
    trace = pool_trace()
    requests = sum(len(names) for _, names in trace)
    print(f"(g) adaptive warm pools: a replayed bursty trace, {len(trace)} bursts of {BURST} concurrent "
          f"first requests ({requests} requests), {POOL_ENVS} environments bursty one at a time "
          f"({BURSTS_PER_PHASE} bursts each, {POOL_PHASES} round(s)), {IDLE_GAP:.0f} s idle gaps, "
          f"{PHASE_GAP:.0f} s between environments; "
          f"pool memory budget {POOL_BUDGET_MI} MiB ({POOL_MEMORY_MI} MiB per instance) for both")
    print(f"{'pools':<34}{'cold starts':>12}{'first request p50':>20}{'p90':>10}")
    for label, run in runs.items():
        print(f"{label:<34}{run['cold']:>12}{median(run['latency']):>18.1f}ms{p90(run['latency']):>8.1f}ms")
    for label, run in runs.items():
        print(f"  pool sizes after each burst, {label}: " + " ".join("/".join(map(str, s)) for s in run["sizes"]))


def main_pools():
    workdir = tempfile.mkdtemp(prefix="kappa-bench-pools-")
    runs = {}
    for policy, label in (("fixed", f"fixed (poolsize {POOL_SIZE} each)"),
                          ("adaptive", "adaptive (same budget)")):
        d = os.path.join(workdir, policy)
        os.makedirs(d)
        runs[label] = bench_pools(policy, d)
    shutil.rmtree(workdir, ignore_errors=True)
    report_pools(runs)


def bench_platform(mode, workdir, seconds, cold_n, proxy_only=False):
    """Sections (a)-(c) against one `kappa up --sandbox <mode>` (only (a) with `proxy_only`);
    the direct, nginx and HAProxy baselines only where the upstream has a host port
    (unsandboxed)."""
    kappa = Kappa(workdir, extra=["--sandbox", mode])
    proxy = haproxy = None
    out = {"a32": {}, "a1": {}}
    try:
        # ---- (a) proxy throughput: an nginx upstream run as a Kappa function ----------------
        deploy_upstream(kappa, workdir)
        targets = {}
        if mode == "none":
            up_port = wait_for("the upstream instance address", lambda: kappa.instance_port("upstream"))
            proxy_port = free_port()
            proxy_conf = os.path.join(workdir, "nginx-proxy.conf")
            with open(proxy_conf, "w") as f:
                f.write(nginx_proxy_conf(proxy_port, up_port, workdir))
            proxy = subprocess.Popen([NGINX, "-c", proxy_conf, "-p", workdir, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for("nginx proxy", lambda: http_get(proxy_port, "/up")[0] == 200)
            ha_port = free_port()
            ha_conf = os.path.join(workdir, "haproxy.cfg")
            with open(ha_conf, "w") as f:
                f.write(haproxy_conf(ha_port, up_port))
            haproxy = subprocess.Popen([HAPROXY, "-f", ha_conf, "-db"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for("haproxy", lambda: http_get(ha_port, "/up")[0] == 200)
            targets["direct to upstream"] = f"http://127.0.0.1:{up_port}/up"
            targets["nginx proxy_pass"] = f"http://127.0.0.1:{proxy_port}/up"
            targets["haproxy (http-reuse always)"] = f"http://127.0.0.1:{ha_port}/up"
        targets["kappa router"] = f"http://127.0.0.1:{kappa.router}/up"
        for name, url in targets.items():
            wrk(url, 32, 1)  # warm up connections
            out["a32"][name] = wrk(url, 32, seconds)
            out["a1"][name] = wrk(url, 1, seconds, threads=1)
        if proxy_only:
            return out

        # ---- (b) cold starts -------------------------------------------------------------
        hello = os.path.join(ROOT, "functions", "examples", "hello", "hello.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        kappa.cli("env", "create", "--name", "python0", "--image", "python", "--poolsize", "0")
        for i in range(cold_n):
            for env in ("python", "python0"):
                name = f"c{env[-1] if env.endswith('0') else 'w'}{i}"
                kappa.cli("fn", "create", "--name", name, "--env", env, "--code", hello)
                kappa.cli("route", "create", "--url", f"/{name}", "--function", name)
        time.sleep(2)  # let the warm pool fill
        out["warm_pool"], out["no_pool"] = [], []
        for i in range(cold_n):
            out["warm_pool"].append(first_request_ms(kappa.router, f"/cw{i}"))
            time.sleep(0.5)  # let the pool refill
            out["no_pool"].append(first_request_ms(kappa.router, f"/c0{i}"))

        # ---- (c) warm requests -----------------------------------------------------------
        out["warm_router"] = wrk(f"http://127.0.0.1:{kappa.router}/cw0", 1, seconds, threads=1)
        py_port = kappa.instance_port("cw0")
        out["warm_direct"] = wrk(f"http://127.0.0.1:{py_port}/", 1, seconds, threads=1) if py_port else None
    finally:
        for p in (proxy, haproxy):
            if p:
                p.terminate()
                p.wait()
        kappa.stop()
    return out



# ---- (b) the warm-pool first request: figure, baselines and where the time goes ------------

class OtlpJsonCollector:
    """A local OTLP/HTTP receiver (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) that keeps every
    span: (trace id, span id, parent id, name, start ns, end ns)."""

    def __init__(self):
        import http.server
        import threading

        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                try:
                    sink.add(json.loads(body))
                except ValueError:
                    pass
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.spans = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, data):
        for rs in data.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    self.spans.append((s.get("traceId"), s.get("spanId"), s.get("parentSpanId"),
                                       s.get("name"), int(s.get("startTimeUnixNano", 0)),
                                       int(s.get("endTimeUnixNano", 0))))

    def stop(self):
        self.server.shutdown()


def runtime_alone_ms(runs, workdir):
    """The Python runtime's own floor, without Kappa: a generic `server.py` started beforehand,
    then (client-measured) a fresh connection with `POST /v2/specialize` of a never-imported
    copy of hello.py in a read-only directory, and a fresh connection with `GET /`."""
    server = os.path.join(ROOT, "functions", "runtimes", "python", "server.py")
    hello = os.path.join(ROOT, "functions", "examples", "hello", "hello.py")
    times = []
    for i in range(runs):
        code = os.path.join(workdir, f"alone{i}")
        os.makedirs(code)
        shutil.copy(hello, os.path.join(code, "hello.py"))
        os.chmod(os.path.join(code, "hello.py"), 0o444)
        os.chmod(code, 0o555)
        port = free_port()
        proc = subprocess.Popen([PYTHON, server, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for("the runtime", lambda: http_get(port, "/healthz")[0] == 200)
            body = json.dumps({"filepath": os.path.join(code, "hello.py"),
                               "functionName": "hello.main"})
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v2/specialize", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            status, _ = http_get(port, "/")
            times.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200 or status != 200:
                sys.exit(f"the runtime alone answered {resp.status} / {status}")
        finally:
            proc.terminate()
            proc.wait()
    return times


# Rows of the breakdown: (label, from, to), each point a (span name, "start" | "end").
BREAKDOWN = (
    ("router: request read, route matched, admission", ("server", "start"), ("provision", "start")),
    ("pool manager: function lookup, begin specialization", ("provision", "start"), ("specialization", "start")),
    ("pool manager: environment, package, config lookups", ("specialization", "start"), ("take from pool", "start")),
    ("pool manager: take a warm instance, build the request", ("take from pool", "start"), ("specialize", "start")),
    ("backend: place code (archive cache, hard link)", ("place code", "start"), ("place code", "end")),
    ("backend: log assignment, specialize body", ("place code", "end"), ("runtime specialize", "start")),
    ("backend: runtime /v2/specialize (connect, import, answer)", ("runtime specialize", "start"), ("runtime specialize", "end")),
    ("pool manager: endpoint into the index", ("specialize", "end"), ("specialization", "end")),
    ("router: provision answer reaches the request", ("specialization", "end"), ("provision", "end")),
    ("router: admit on the new endpoint", ("provision", "end"), ("upstream", "start")),
    ("router: upstream (new connection, request, response head)", ("upstream", "start"), ("upstream", "end")),
    ("router: response head to the end of the server span", ("upstream", "end"), ("server", "end")),
)


def warm_breakdown(spans):
    """Per cold request trace: the BREAKDOWN rows in ms, plus the server span's length."""
    by_trace = {}
    for trace, _span, _parent, name, start, end in spans:
        key = "server" if name.startswith("GET /") else name
        by_trace.setdefault(trace, {}).setdefault(key, (start, end))
    rows = []
    for points in by_trace.values():
        if "server" not in points or "runtime specialize" not in points:
            continue
        row = {}
        for label, a, b in BREAKDOWN:
            if a[0] in points and b[0] in points:
                pa = points[a[0]][0 if a[1] == "start" else 1]
                pb = points[b[0]][0 if b[1] == "start" else 1]
                row[label] = (pb - pa) / 1e6
        row["server span (router: request to response head)"] = \
            (points["server"][1] - points["server"][0]) / 1e6
        rows.append(row)
    return rows


def runtime_reported_ms(kappa, name):
    """The runtime's own report of its specialization ("specialized ... in X ms")."""
    env = dict(os.environ, KAPPA_DATA_DIR=kappa.data)
    out = subprocess.run([KAPPA, "fn", "logs", name], env=env, capture_output=True, text=True)
    m = re.search(r"kappa: specialized .* in ([0-9.]+) ms", out.stdout)
    return float(m.group(1)) if m else None


def bench_warm(mode, workdir, cold_n, traced):
    """First requests of `cold_n` never-invoked Python functions with a warm pool (poolsize 3)
    on one `kappa up --sandbox <mode>`; with `traced`, spans are exported (OTLP/JSON to a local
    collector) and the breakdown is returned too."""
    collector = OtlpJsonCollector() if traced else None
    env = {}
    if collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_TRACES_SAMPLER": "always_on"}
    kappa = Kappa(workdir, extra=["--sandbox", mode], env=env)
    firsts, reported = [], []
    try:
        hello = os.path.join(ROOT, "functions", "examples", "hello", "hello.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        for i in range(cold_n):
            kappa.cli("fn", "create", "--name", f"cw{i}", "--env", "python", "--code", hello)
            kappa.cli("route", "create", "--url", f"/cw{i}", "--function", f"cw{i}")
        time.sleep(2)  # let the warm pool fill
        for i in range(cold_n):
            firsts.append(first_request_ms(kappa.router, f"/cw{i}"))
            time.sleep(0.5)  # let the pool refill
        if traced:
            reported = [r for r in (runtime_reported_ms(kappa, f"cw{i}") for i in range(cold_n))
                        if r is not None]
            time.sleep(6)  # the batch exporter's interval
    finally:
        kappa.stop()
        if collector:
            collector.stop()
    rows = warm_breakdown(collector.spans) if collector else []
    return {"first": firsts, "rows": rows, "reported": reported}


def print_warm(runs, alone, breakdowns):
    print(f"(b) warm-pool first request of a never-invoked Python function "
          f"(poolsize 3, client-measured: fresh connection, GET, full response; ms)")
    print(f"{'case':<60}{'median':>10}{'p90':>10}")
    for mode, label in (("none", "unsandboxed"), ("namespaces", "sandboxed")):
        if mode in runs:
            print(f"{'kappa, ' + label:<60}{median(runs[mode]):>10.2f}{p90(runs[mode]):>10.2f}")
    print(f"{'runtime alone: POST /v2/specialize + GET, no Kappa (same run)':<60}"
          f"{median(alone):>10.2f}{p90(alone):>10.2f}")
    print(f"{'Fission Python environment, specialize + request (issue 14)':<60}{3.4:>10.2f}")
    print(f"{'aim':<60}{'<= 1.70':>10}")
    for mode, (rows, reported) in breakdowns.items():
        print()
        print(f"where the time goes, {'unsandboxed' if mode == 'none' else 'sandboxed'}, traces on "
              f"(medians over {len(rows)} first requests, ms)")
        labels = [b[0] for b in BREAKDOWN] + ["server span (router: request to response head)"]
        for label in labels:
            xs = [r[label] for r in rows if label in r]
            if xs:
                print(f"  {label:<66}{median(xs):>8.3f}")
        if reported:
            print(f"  {'runtime: its own report of the import and checks':<66}{median(reported):>8.3f}")


def main_warm(cold_n, breakdown):
    workdir = tempfile.mkdtemp(prefix="kappa-bench-warm-")
    runs, breakdowns = {}, {}
    try:
        for mode in ("none", "namespaces"):
            d = os.path.join(workdir, mode)
            os.makedirs(d)
            runs[mode] = bench_warm(mode, d, cold_n, False)["first"]
        if breakdown:
            for mode in ("none", "namespaces"):
                d = os.path.join(workdir, mode + "-traced")
                os.makedirs(d)
                r = bench_warm(mode, d, cold_n, True)
                breakdowns[mode] = (r["rows"], r["reported"])
        alone = runtime_alone_ms(cold_n, workdir)
    finally:
        subprocess.run(["chmod", "-R", "u+w", workdir], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    print_warm(runs, alone, breakdowns)


def pss_kib(pid):
    """Proportional set size of one process (KiB), from smaps_rollup; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def instance_processes(platform_pid):
    """{instance cgroup: [(pid, role)]} of every process in one of the platform's instance
    cgroups (`.../kappa-<pid>/<instance>`). Roles: `runtime` (the function's user), `helper`
    (the sandbox's monitor and init), `waiter` (a template fork's waiter, root, the helper's
    `wait` stage once it has forked the payload). Needs cgroups."""
    out = {}
    marker = f"/kappa-{platform_pid}/"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cgroup") as f:
                group = next((l.strip().split(marker, 1)[1] for l in f if marker in l), None)
            if group is None:
                continue
            with open(f"/proc/{name}/status") as f:
                uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
        except (OSError, StopIteration, ValueError):
            continue
        # The init runs as `/proc/self/exe` (comm `exe`); a waiter is a fork of the template,
        # which execs the helper's `wait` stage (comm `kappa-waiter`), or stays a fork of the
        # template when that exec failed (comm `python3`).
        helper = (comm.startswith("kappa") or comm == "exe") and comm != "kappa-waiter"
        role = "runtime" if uid != 0 else ("helper" if helper else "waiter")
        out.setdefault(group, []).append((int(name), role))
    return out


def instance_of_group(group, procs):
    """The instance id of an instance cgroup: its name, except for an instance started from a
    spare sandbox (design note 011), whose cgroups keep the spare's name (`.spare-<n>`); its
    runtime's `/userfunc` is then bound from the instance's renamed directory
    (`.../instances/<id>/userfunc`, as `/proc/<pid>/mountinfo` shows it)."""
    if not group.startswith(".spare-"):
        return group
    for pid, role in procs:
        if role != "runtime":
            continue
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 4 and fields[4] == "/userfunc":
                        return os.path.basename(os.path.dirname(fields[3]))
        except OSError:
            continue
    return group


def bench_zygote(workdir, cold_n, pss_n):
    """Section (b) in the default sandbox with the Python template (zygote) on and off in the
    same run: first requests with a warm pool and with poolsize 0, then the PSS of `pss_n` idle
    specialized Python instances."""
    hello = os.path.join(ROOT, "functions", "examples", "hello", "hello.py")
    hello_js = os.path.join(ROOT, "functions", "examples", "nodejs", "hello.js")
    out = {}
    for zygote in ("on", "off"):
        d = os.path.join(workdir, f"zygote-{zygote}")
        os.makedirs(d)
        kappa = Kappa(d, extra=["--zygote", zygote])
        try:
            kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
            kappa.cli("env", "create", "--name", "python0", "--image", "python", "--poolsize", "0")
            # One start first, so poolsize 0 measures instance starts, not the template's.
            kappa.cli("fn", "create", "--name", "prime", "--env", "python0", "--code", hello)
            kappa.cli("route", "create", "--url", "/prime", "--function", "prime")
            first_request_ms(kappa.router, "/prime")
            for i in range(cold_n):
                for env in ("python", "python0"):
                    name = f"c{env[-1] if env.endswith('0') else 'w'}{i}"
                    kappa.cli("fn", "create", "--name", name, "--env", env, "--code", hello)
                    kappa.cli("route", "create", "--url", f"/{name}", "--function", name)
            # Node.js has no template (it cannot fork): its no-pool start is an exec either way.
            kappa.cli("env", "create", "--name", "node0", "--image", "nodejs", "--poolsize", "0")
            for i in range(cold_n):
                kappa.cli("fn", "create", "--name", f"cn{i}", "--env", "node0", "--code", hello_js)
                kappa.cli("route", "create", "--url", f"/cn{i}", "--function", f"cn{i}")
            time.sleep(2)  # let the warm pool fill
            warm, cold, node = [], [], []
            for i in range(cold_n):
                warm.append(first_request_ms(kappa.router, f"/cw{i}"))
                time.sleep(0.5)  # let the pool refill
                cold.append(first_request_ms(kappa.router, f"/c0{i}"))
                node.append(first_request_ms(kappa.router, f"/cn{i}"))
            # PSS: a fresh platform state is not needed; count only poolsize-0 instances, which
            # are all specialized and idle now (the pool's generic ones are left out).
            kappa.cli("env", "create", "--name", "pss", "--image", "python", "--poolsize", "0")
            for i in range(pss_n):
                kappa.cli("fn", "create", "--name", f"m{i}", "--env", "pss", "--code", hello)
                kappa.cli("route", "create", "--url", f"/m{i}", "--function", f"m{i}")
                first_request_ms(kappa.router, f"/m{i}")
            time.sleep(2)
            groups = {g: procs for g, procs in instance_processes(kappa.proc.pid).items()
                      if instance_of_group(g, procs).startswith("pss-")}
            roles = {"runtime": [], "waiter": [], "helper": []}
            for procs in groups.values():
                for role in roles:
                    roles[role].append(sum(pss_kib(pid) for pid, r in procs if r == role))
            out[zygote] = {"warm_pool": warm, "no_pool": cold, "node_no_pool": node,
                           "instances": len(groups),
                           "pss": roles}
        finally:
            kappa.stop()
    return out


def print_zygote(z, bare):
    print("(b) sandboxed first request with and without the Python template (zygote), same run (ms)")
    print(f"{'case':<56}{'median':>10}{'p90':>10}")
    for zygote in ("on", "off"):
        run = z[zygote]
        print(f"{f'warm pool (poolsize 3), zygote {zygote}':<56}"
              f"{median(run['warm_pool']):>10.2f}{p90(run['warm_pool']):>10.2f}")
        print(f"{f'no pool (poolsize 0), zygote {zygote}':<56}"
              f"{median(run['no_pool']):>10.2f}{p90(run['no_pool']):>10.2f}")
    for zygote in ("on", "off"):
        node = z[zygote]["node_no_pool"]
        print(f"{f'Node.js no pool (poolsize 0, exec), zygote {zygote}':<56}"
              f"{median(node):>10.2f}{p90(node):>10.2f}")
    print(f"{'bare python3 -c pass (baseline)':<56}{median(bare):>10.2f}{p90(bare):>10.2f}")
    node_bare = bare_node_ms(len(bare))
    print(f"{'bare node -e 0 (baseline)':<56}{median(node_bare):>10.2f}{p90(node_bare):>10.2f}")
    ratio = median(z["on"]["no_pool"]) / median(bare)
    print(f"no-pool first request / bare python3, zygote on: {ratio:.2f}x (aim: <= 1.0x)")
    print("PSS per idle specialized Python instance (MiB, mean over the instances)")
    for zygote in ("on", "off"):
        run = z[zygote]
        n = max(1, run["instances"])
        mib = {role: sum(v) / n / 1024 for role, v in run["pss"].items()}
        print(f"  zygote {zygote}: runtime process {mib['runtime']:.2f} (aim: <= 2 MiB), "
              f"waiter {mib['waiter']:.2f}, sandbox monitor + init {mib['helper']:.2f}, "
              f"whole instance {sum(mib.values()):.2f}  ({run['instances']} instances)")


def print_proxy(plain, boxed, instructions):
    """Prints section (a): `plain` unsandboxed, `boxed` sandboxed (or None), `instructions` the
    router's instructions per request (`router_instructions`)."""
    print("(a) proxy: hello from an nginx upstream (run as a Kappa function), keep-alive")
    print(f"{'path':<34}{'32 conns req/s':>16}{'p50':>10}{'p99':>10}{'1 conn p50':>13}{'p99':>10}{'added p50':>12}{'added p99':>12}")
    direct1 = plain["a1"]["direct to upstream"]
    rows = [(name, plain["a32"][name], plain["a1"][name]) for name in plain["a32"]]
    if boxed:
        rows.append(("kappa router, sandboxed upstream", boxed["a32"]["kappa router"], boxed["a1"]["kappa router"]))
    for name, r32, r1 in rows:
        label = "kappa router, unsandboxed upstream" if name == "kappa router" else name
        added50 = "" if name.startswith("direct") else f"{r1['p50_us'] - direct1['p50_us']:.0f} us"
        added99 = "" if name.startswith("direct") else f"{r1['p99_us'] - direct1['p99_us']:.0f} us"
        print(f"{label:<34}{r32['rps']:>16,.0f}{r32['p50_us']:>8.0f}us{r32['p99_us']:>8.0f}us"
              f"{r1['p50_us']:>11.0f}us{r1['p99_us']:>8.0f}us{added50:>12}{added99:>12}")
    router = plain["a32"]["kappa router"]["rps"]
    for name in ("nginx proxy_pass", "haproxy (http-reuse always)"):
        print(f"router throughput / {name.split()[0]} throughput at 32 connections: "
              f"{router / plain['a32'][name]['rps']:.2f}x (aim: >= 1.2x)")
    best = min(plain["a1"][name]["p50_us"] for name in ("nginx proxy_pass", "haproxy (http-reuse always)"))
    print(f"latency added at 1 connection, p50: router {plain['a1']['kappa router']['p50_us'] - direct1['p50_us']:.0f} us,"
          f" better proxy {best - direct1['p50_us']:.0f} us (aim: router <= better proxy)")
    print(f"router instructions per request (callgrind, {CALLGRIND_REQUESTS} warm requests on one "
          f"connection, unsandboxed): {instructions:,.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    ap.add_argument("--mq-only", action="store_true", help="only the message queue section (d)")
    ap.add_argument("--scale-only", action="store_true", help="only the routes-at-scale section (e)")
    ap.add_argument("--tracing-only", action="store_true", help="only the tracing section (f)")
    ap.add_argument("--pools-only", action="store_true", help="only the adaptive pools section (g)")
    ap.add_argument("--warm-only", action="store_true",
                    help="only the warm-pool first request of (b), beside its baselines")
    ap.add_argument("--breakdown", action="store_true",
                    help="with --warm-only: also where the time goes (a traced run per mode)")
    ap.add_argument("--proxy-only", action="store_true",
                    help="only section (a), unsandboxed, with the router's instructions per request")
    ap.add_argument("--zygote-only", action="store_true",
                    help="only section (b) with the Python template on and off, and instance PSS")
    args = ap.parse_args()
    # Functions and routes the scale section creates (KAPPA_BENCH_ROUTES shrinks it).
    scale_n = int(os.environ.get("KAPPA_BENCH_ROUTES", "1000" if args.quick else "10000"))
    if args.mq_only:
        bench_mq(args.quick)
        return
    if args.pools_only:
        main_pools()
        return
    seconds = 3 if args.quick else 10
    if args.scale_only:
        bench_scale(scale_n, seconds)
        return
    if args.tracing_only:
        bench_tracing(seconds)
        return
    cold_n = 5 if args.quick else 20
    pss_n = 5 if args.quick else 20
    if args.warm_only:
        main_warm(cold_n, args.breakdown)
        return
    if args.zygote_only:
        workdir = tempfile.mkdtemp(prefix="kappa-bench-")
        z = bench_zygote(workdir, cold_n, pss_n)
        print_zygote(z, bare_python_ms(cold_n))
        shutil.rmtree(workdir, ignore_errors=True)
        return

    for tool in (KAPPA, NGINX, WRK, HAPROXY, VALGRIND):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}: run scripts/bench.sh (it builds kappa and installs nginx, "
                     "haproxy, wrk and valgrind)")
    if args.proxy_only:
        workdir = tempfile.mkdtemp(prefix="kappa-bench-")
        plain = bench_platform("none", workdir, seconds, cold_n, proxy_only=True)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"Kappa benchmark (a), {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
              f"wrk {seconds}s runs, {KAPPA}, KAPPA_ROUTER_THREADS={os.environ.get('KAPPA_ROUTER_THREADS', 'unset')}")
        print_proxy(plain, None, router_instructions())
        return

    workdir = tempfile.mkdtemp(prefix="kappa-bench-")
    runs = {}
    for mode in ("none", "namespaces"):
        mode_dir = os.path.join(workdir, mode)
        os.makedirs(mode_dir)
        runs[mode] = bench_platform(mode, mode_dir, seconds, cold_n)
    zygote = bench_zygote(workdir, cold_n, pss_n)
    bare = bare_python_ms(cold_n)
    alone_dir = os.path.join(workdir, "alone")
    os.makedirs(alone_dir)
    alone = runtime_alone_ms(cold_n, alone_dir)
    subprocess.run(["chmod", "-R", "u+w", alone_dir], check=False)
    instructions = router_instructions()

    # ---- report ------------------------------------------------------------------------
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    print(f"Kappa benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({cpu}), wrk {seconds}s runs")
    print()
    plain, boxed = runs["none"], runs["namespaces"]
    print_proxy(plain, boxed, instructions)
    print()
    print(f"(b) first request of a never-invoked Python function (n={cold_n}, client-measured, ms)")
    print(f"{'case':<56}{'median':>10}{'p90':>10}")
    for label, run in (("unsandboxed", plain), ("sandboxed", boxed)):
        print(f"{'warm pool (poolsize 3), ' + label + ': specialize + request':<56}"
              f"{median(run['warm_pool']):>10.2f}{p90(run['warm_pool']):>10.2f}")
        print(f"{'no pool (poolsize 0), ' + label + ': start + specialize':<56}"
              f"{median(run['no_pool']):>10.2f}{p90(run['no_pool']):>10.2f}")
    print(f"{'bare python3 -c pass (baseline)':<56}{median(bare):>10.2f}{p90(bare):>10.2f}")
    print(f"{'runtime alone: POST /v2/specialize + GET (baseline)':<56}"
          f"{median(alone):>10.2f}{p90(alone):>10.2f}")
    print("warm pool aim: <= 1.70 ms (Fission's Python environment: 3.4 ms for specialize + "
          "request, issue 14); --warm-only --breakdown shows where the time goes")
    print()
    print_zygote(zygote, bare)
    print()
    print("(c) warm request to the Python hello function, 1 connection (us)")
    print(f"{'path':<34}{'req/s':>10}{'p50':>10}{'p99':>10}")
    for label, r in (("kappa router, unsandboxed", plain["warm_router"]),
                     ("kappa router, sandboxed", boxed["warm_router"]),
                     ("direct to instance, unsandboxed", plain["warm_direct"])):
        if r:
            print(f"{label:<34}{r['rps']:>10,.0f}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}")
    cold_over_warm = median(boxed["warm_pool"]) * 1000 / boxed["warm_router"]["p50_us"]
    print(f"warm-pool first request / warm request (p50), sandboxed: {cold_over_warm:.1f}x (aim: <= 5x)")
    print()
    print("isolation cost (sandboxed minus unsandboxed, same run):")
    print(f"  warm request p50: {boxed['warm_router']['p50_us'] - plain['warm_router']['p50_us']:+.0f} us"
          f" ({plain['warm_router']['p50_us']:.0f} -> {boxed['warm_router']['p50_us']:.0f})")
    print(f"  proxy throughput at 32 connections: "
          f"{boxed['a32']['kappa router']['rps'] / plain['a32']['kappa router']['rps']:.2f}x")
    print(f"  first request, warm pool: {median(boxed['warm_pool']) - median(plain['warm_pool']):+.2f} ms"
          f" ({median(plain['warm_pool']):.2f} -> {median(boxed['warm_pool']):.2f})")
    print(f"  first request, no pool: {median(boxed['no_pool']) - median(plain['no_pool']):+.2f} ms"
          f" ({median(plain['no_pool']):.2f} -> {median(boxed['no_pool']):.2f})")
    shutil.rmtree(workdir, ignore_errors=True)
    print()
    bench_mq(args.quick)
    print()
    bench_scale(scale_n, seconds)
    print()
    bench_tracing(seconds)
    print()
    main_pools()


if __name__ == "__main__":
    main()
