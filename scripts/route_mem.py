#!/usr/bin/env python3
"""Route memory, A/B: the platform's RSS per function and per route, read right after each
phase of creates (as section (e) of scripts/bench.py reads it) and again once the platform has
settled (its CPU time stopped moving), for one or more `kappa` binaries alternated in one run.

The creates are those of section (e): N functions behind one `static` environment (an nginx
upstream, poolsize 2), then N HttpTriggers `/r/<i>` -> `f<i>`, through the API on one
keep-alive connection.

  python3 scripts/route_mem.py -n 10000 --rounds 2 BIN_A BIN_B ...
  python3 scripts/route_mem.py -n 2000 --heaptrack OUT_DIR BIN   (heap profile: the process is
      killed with SIGKILL after the routes settled, so heaptrack's "leaked" bytes are the live
      heap then; read it with `heaptrack_print --flamegraph-cost-type leaked -F ...`)
"""

import argparse
import os
import signal
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def run_one(spec, n, heaptrack_dir=None):
    """`spec`: a binary's path, optionally followed by `+NAME=VALUE` environment settings for
    the platform's process (e.g. `+LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`)."""
    binary, *settings = spec.split("+")
    env = dict(s.split("=", 1) for s in settings)
    bench.KAPPA = binary
    workdir = tempfile.mkdtemp(prefix="kappa-route-mem-")
    wrap = ()
    if heaptrack_dir:
        os.makedirs(heaptrack_dir, exist_ok=True)
        wrap = ("heaptrack", "-o", os.path.join(heaptrack_dir, "heaptrack.kappa"))
    kappa = bench.Kappa(workdir, extra=["--sandbox", "none"], env=env, wrap=wrap,
                        start_limit=180.0)
    # With heaptrack the process to read is heaptrack's child (the kappa process itself).
    pid = kappa.proc.pid
    if heaptrack_dir:
        for _ in range(100):
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            found = [int(k) for k in kids
                     if os.path.basename(os.readlink(f"/proc/{k}/exe")) == "kappa"]
            if found:
                pid = found[0]
                break
            time.sleep(0.1)
    out = {}
    try:
        conf = os.path.join(workdir, "upstream.conf.tmpl")
        with open(conf, "w") as f:
            f.write(bench.NGINX_UPSTREAM)
        command = (f"sed \"s/\\$PORT/$PORT/g\" {conf} > up.conf && "
                   f"exec {bench.NGINX} -c \"$PWD/up.conf\" -p \"$PWD\" -g 'daemon off;'")
        kappa.cli("env", "create", "--name", "static", "--image", "static", "--command", command,
                  "--poolsize", "2")
        kappa.cli("fn", "create", "--name", "f0", "--env", "static", "--code", conf,
                  "--concurrency", "1", "--rpp", "10000")
        kappa.cli("route", "create", "--name", "r0", "--url", "/r/0", "--function", "f0")
        api = bench.Api(kappa)
        fn = bench.template(api.call("GET", "/v1/functions/f0"))
        route = bench.template(api.call("GET", "/v1/httptriggers/r0"))

        def route_body(i):
            body = dict(route, metadata={"name": f"r{i}"})
            body["spec"] = dict(route["spec"], relativeurl=f"/r/{i}",
                                functionref=dict(route["spec"]["functionref"], name=f"f{i}"))
            return body

        rss0 = bench.settled_rss_kib(pid)
        for i in range(1, n):
            api.call("POST", "/v1/functions", dict(fn, metadata={"name": f"f{i}"}))
        rss1_now = bench.rss_kib(pid)
        rss1 = bench.settled_rss_kib(pid)
        for i in range(1, n):
            api.call("POST", "/v1/httptriggers", route_body(i))
        rss2_now = bench.rss_kib(pid)
        rss2 = bench.settled_rss_kib(pid)
        created = n - 1
        out = {
            "fn_now": (rss1_now - rss0) / created,
            "route_now": (rss2_now - rss1_now) / created,
            "fn": (rss1 - rss0) / created,
            "route": (rss2 - rss1) / created,
            "end_mib": rss2 / 1024,
        }
    finally:
        if heaptrack_dir:
            os.kill(pid, signal.SIGKILL)
            kappa.proc.wait(timeout=300)
        else:
            kappa.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--heaptrack", metavar="DIR")
    args = ap.parse_args()
    print(f"N = {args.n}; KiB per object: 'now' read right after the phase's last create "
          "(section (e)'s reading), 'settled' once the process's CPU time stopped moving")
    print(f"{'binary (+ environment)':<40}{'fn now':>9}{'route now':>11}{'fn settled':>12}{'route settled':>15}"
          f"{'RSS end':>10}")
    for r in range(args.rounds):
        for b in args.binaries:
            o = run_one(b, args.n, args.heaptrack)
            path, *settings = b.split("+")
            label = "/".join(path.split("/")[-4:]) + "".join(
                "+" + os.path.basename(x) for x in settings)
            print(f"{label[-40:]:<40}{o['fn_now']:>9.2f}{o['route_now']:>11.2f}{o['fn']:>12.2f}"
                  f"{o['route']:>15.2f}{o['end_mib']:>8.0f}Mi", flush=True)


if __name__ == "__main__":
    main()
