#!/usr/bin/env python3
"""Kappa's benchmark: prints Kappa's figures side by side with baselines measured in the same run.

  (a) proxy throughput and latency: wrk through the Kappa router, through nginx `proxy_pass`, and
      directly to the same upstream (an nginx instance run *as a Kappa function*, fast enough that
      the proxy is the bottleneck);
  (b) first-request latency of never-invoked Python functions with a warm pool and with
      `poolsize 0`, next to a bare `python3 -c pass` start;
  (c) warm request latency of a Python function through the router and directly.
  (a)-(c) run twice in the same run: with instances unsandboxed (`--sandbox none`, which the
      direct and nginx baselines need: they reach the upstream on a host port) and in the
      default built-in sandbox (reached only through its connector), so the cost of isolation
      on a warm request and on a cold start is printed side by side.
  (d) message queue: messages per second through a trivial Python function via NATS JetStream
      (a message-queue trigger with a response topic) at maxConcurrency 1 and 64.
  (e) adaptive warm pools: a replayed bursty trace (bursts of concurrent first requests to new
      functions, one environment at a time, separated by idle gaps) against fixed pools and
      against adaptive pools under the same pool memory budget; prints the cold starts (pool
      misses: requests that waited for an instance start, from the executor's metrics).

Usage: scripts/bench.sh [--quick]   (builds the release binary, then runs this script)
Needs: nginx, wrk, nats-server (scripts/install-deps.sh installs them). Uses free loopback ports
only. `--mq-only` runs only (d), `--pools-only` only (e).
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
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAPPA = os.environ.get("KAPPA_BIN") or os.path.join(ROOT, "target", "release", "kappa")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
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
    def __init__(self, workdir, extra=()):
        self.data = os.path.join(workdir, "kappa-data")
        self.router, self.api, self.admin = free_port(), free_port(), free_port()
        self.log = open(os.path.join(workdir, "kappa-up.log"), "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [KAPPA, "up", "--no-example", "--data-dir", self.data,
             "--router-addr", f"127.0.0.1:{self.router}", "--api-addr", f"127.0.0.1:{self.api}",
             "--admin-addr", f"127.0.0.1:{self.admin}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for("kappa up", lambda: http_get(self.admin, "/readyz")[0] == 200
                 and os.path.exists(os.path.join(self.data, "client.json")))

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


def bench_mq(quick):
    """(d): messages per second through a trivial function at maxConcurrency 1 and 64."""
    if not os.path.exists(NATS_SERVER):
        sys.exit("missing nats-server: run scripts/install-deps.sh")
    workdir = tempfile.mkdtemp(prefix="kappa-bench-mq-")
    nats_port = free_port()
    nats = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", os.path.join(workdir, "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    kappa = None
    try:
        wait_for("nats-server", lambda: socket.create_connection(("127.0.0.1", nats_port)).close() or True)
        kappa = Kappa(workdir, ["--nats-url", f"nats://127.0.0.1:{nats_port}"])
        code = os.path.join(ROOT, "functions", "testdata", "python", "mq.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        kappa.cli("fn", "create", "--name", "echo", "--env", "python", "--code", code,
                  "--entrypoint", "mq.echo", "--rpp", "16", "--concurrency", "4")
        n = 1000 if quick else 5000
        for conc in (1, 64):
            name = f"bench{conc}"
            kappa.cli("mqt", "create", "--name", name, "--function", "echo", "--topic", f"{name}-in",
                      "--resptopic", f"{name}-out", "--maxconcurrency", str(conc))
            wait_for(f"trigger {name}", lambda: json.loads(kappa.cli("mqt", "get", name, "-o", "json"))
                     ["status"].get("state") == "ready")
            sub, pub = RawNats(nats_port), RawNats(nats_port)
            sub.subscribe(f"{name}-out")
            warm = 200
            pub.publish_many(f"{name}-in", [b'{"warm":%d}' % i for i in range(warm)])
            if len(sub.count(warm)) < warm:
                sys.exit(f"warm-up of {name} did not complete")
            t0 = time.monotonic()
            pub.publish_many(f"{name}-in", [b'{"id":%d}' % i for i in range(n)])
            times = sub.count(n)
            if len(times) < n:
                sys.exit(f"{name}: only {len(times)} of {n} replies")
            results[conc] = n / (times[-1] - t0)
    finally:
        if kappa:
            kappa.stop()
        nats.terminate()
        nats.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"(d) message queue: a trivial Python function via NATS JetStream, {n} messages, "
          "request and reply (respTopic), at least once")
    print(f"{'maxConcurrency':<22}{'messages/s':>12}")
    for conc, rate in results.items():
        print(f"{conc:<22}{rate:>12,.0f}")
    print("(aim: >= 5,000 messages/s)")


# (e): the trace. Environments are bursty one at a time (a phase each); every burst is BURST
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
    print(f"(e) adaptive warm pools: a replayed bursty trace, {len(trace)} bursts of {BURST} concurrent "
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


def bench_platform(mode, workdir, seconds, cold_n):
    """Sections (a)-(c) against one `kappa up --sandbox <mode>`; the direct and nginx baselines
    only where the upstream has a host port (unsandboxed)."""
    kappa = Kappa(workdir, extra=["--sandbox", mode])
    proxy = None
    out = {"a32": {}, "a1": {}}
    try:
        # ---- (a) proxy throughput: an nginx upstream run as a Kappa function ----------------
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
        wait_for("the upstream function", lambda: http_get(kappa.router, "/up")[0] == 200)
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
            targets["direct to upstream"] = f"http://127.0.0.1:{up_port}/up"
            targets["nginx proxy_pass"] = f"http://127.0.0.1:{proxy_port}/up"
        targets["kappa router"] = f"http://127.0.0.1:{kappa.router}/up"
        for name, url in targets.items():
            wrk(url, 32, 1)  # warm up connections
            out["a32"][name] = wrk(url, 32, seconds)
            out["a1"][name] = wrk(url, 1, seconds, threads=1)

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
        if proxy:
            proxy.terminate()
            proxy.wait()
        kappa.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    ap.add_argument("--mq-only", action="store_true", help="only the message queue section (d)")
    ap.add_argument("--pools-only", action="store_true", help="only the adaptive pools section (e)")
    args = ap.parse_args()
    if args.mq_only:
        bench_mq(args.quick)
        return
    if args.pools_only:
        main_pools()
        return
    seconds = 3 if args.quick else 10
    cold_n = 5 if args.quick else 20

    for tool in (KAPPA, NGINX, WRK):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}: run scripts/bench.sh (it builds kappa and installs nginx and wrk)")

    workdir = tempfile.mkdtemp(prefix="kappa-bench-")
    runs = {}
    for mode in ("none", "namespaces"):
        mode_dir = os.path.join(workdir, mode)
        os.makedirs(mode_dir)
        runs[mode] = bench_platform(mode, mode_dir, seconds, cold_n)
    bare = bare_python_ms(cold_n)

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
    print("(a) proxy: hello from an nginx upstream (run as a Kappa function), keep-alive")
    print(f"{'path':<34}{'32 conns req/s':>16}{'p50':>10}{'p99':>10}{'1 conn p50':>13}{'p99':>10}{'added p50':>12}{'added p99':>12}")
    direct1 = plain["a1"]["direct to upstream"]
    rows = [(name, plain["a32"][name], plain["a1"][name]) for name in plain["a32"]]
    rows.append(("kappa router, sandboxed upstream", boxed["a32"]["kappa router"], boxed["a1"]["kappa router"]))
    for name, r32, r1 in rows:
        label = "kappa router, unsandboxed upstream" if name == "kappa router" else name
        added50 = "" if name.startswith("direct") else f"{r1['p50_us'] - direct1['p50_us']:.0f} us"
        added99 = "" if name.startswith("direct") else f"{r1['p99_us'] - direct1['p99_us']:.0f} us"
        print(f"{label:<34}{r32['rps']:>16,.0f}{r32['p50_us']:>8.0f}us{r32['p99_us']:>8.0f}us"
              f"{r1['p50_us']:>11.0f}us{r1['p99_us']:>8.0f}us{added50:>12}{added99:>12}")
    ratio = plain["a32"]["kappa router"]["rps"] / plain["a32"]["nginx proxy_pass"]["rps"]
    print(f"router throughput / nginx throughput at 32 connections: {ratio:.2f}x (aim: >= 1.2x)")
    print()
    print(f"(b) first request of a never-invoked Python function (n={cold_n}, client-measured, ms)")
    print(f"{'case':<56}{'median':>10}{'p90':>10}")
    for label, run in (("unsandboxed", plain), ("sandboxed", boxed)):
        print(f"{'warm pool (poolsize 3), ' + label + ': specialize + request':<56}"
              f"{median(run['warm_pool']):>10.2f}{p90(run['warm_pool']):>10.2f}")
        print(f"{'no pool (poolsize 0), ' + label + ': start + specialize':<56}"
              f"{median(run['no_pool']):>10.2f}{p90(run['no_pool']):>10.2f}")
    print(f"{'bare python3 -c pass (baseline)':<56}{median(bare):>10.2f}{p90(bare):>10.2f}")
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
    main_pools()


if __name__ == "__main__":
    main()
