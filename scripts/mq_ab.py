#!/usr/bin/env python3
"""Message queue, A/B: CPU time per message of each process of the JetStream chain of section
(d) of scripts/bench.py (the platform's process, the function's instances, nats-server, this
script's client), for one or more `kappa` binaries alternated in one run.

Each round starts a fresh nats-server and `kappa up` per binary, deploys the same function and
triggers as section (d) (`mq.echo`, `--rpp 16 --concurrency 4`, a trigger at each
maxConcurrency with a response topic), warms each trigger with 200 messages, then publishes N
messages at once and waits for their N replies. CPU time is read as section (d) reads it
(`bench.cpu_by_role`: utime + stime per process, so the threads a process ended meanwhile still
count, and an instance that starts or exits during the run does not skew the sum).

  python3 scripts/mq_ab.py --rounds 6 -n 20000 BIN_A BIN_B ...
  python3 scripts/mq_ab.py -n 20000 --conc 64 BIN_A BIN_A+LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
      (a binary followed by `+NAME=VALUE` settings for the platform's environment)
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROLES = ("kappa", "instances", "broker", "bench client")


def run_one(spec, n, concs):
    """One setup of binary `spec`; returns {conc: (messages/s, {role: µs per message})}."""
    binary, *settings = spec.split("+")
    env = dict(s.split("=", 1) for s in settings)
    bench.KAPPA = binary
    workdir = tempfile.mkdtemp(prefix="kappa-mq-ab-")
    port = bench.free_port()
    nats = subprocess.Popen([bench.NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port),
                             "-sd", os.path.join(workdir, "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kappa = None
    out = {}
    try:
        bench.wait_for("nats-server",
                       lambda: socket.create_connection(("127.0.0.1", port)).close() or True)
        kappa = bench.Kappa(workdir, ["--nats-url", f"nats://127.0.0.1:{port}"], env=env)
        code = os.path.join(bench.ROOT, "functions", "testdata", "python", "mq.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        kappa.cli("fn", "create", "--name", "echo", "--env", "python", "--code", code,
                  "--entrypoint", "mq.echo", "--rpp", "16", "--concurrency", "4")
        for conc in concs:
            name = f"bench{conc}"
            kappa.cli("mqt", "create", "--name", name, "--function", "echo", "--mqtype",
                      "nats-jetstream", "--topic", f"{name}-in", "--resptopic", f"{name}-out",
                      "--maxconcurrency", str(conc))
            bench.wait_for(f"trigger {name}", lambda: json.loads(
                kappa.cli("mqt", "get", name, "-o", "json"))["status"].get("state") == "ready")
            sub, pub = bench.RawNats(port), bench.RawNats(port)
            sub.subscribe(f"{name}-out")
            pub.publish_many(f"{name}-in", [b'{"warm":%d}' % i for i in range(200)])
            if len(sub.count(200)) < 200:
                sys.exit(f"warm-up of {name} did not complete")
            before = bench.cpu_by_role(kappa.proc.pid, nats.pid, os.getpid())
            t0 = time.monotonic()
            pub.publish_many(f"{name}-in", [b'{"id":%d}' % i for i in range(n)])
            times = sub.count(n)
            if len(times) < n:
                sys.exit(f"{name}: only {len(times)} of {n} replies")
            after = bench.cpu_by_role(kappa.proc.pid, nats.pid, os.getpid())
            per = bench.cpu_per_message(before, after, n)
            out[conc] = (n / (times[-1] - t0), per)
    finally:
        if kappa:
            kappa.stop()
        nats.terminate()
        nats.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("-n", type=int, default=20000, help="messages per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conc", default="1,64", help="maxConcurrency values, comma-separated")
    args = ap.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    results = {}  # (spec, conc) -> [(rate, per)]
    for r in range(args.rounds):
        for spec in args.binaries:
            for conc, (rate, per) in run_one(spec, args.n, concs).items():
                results.setdefault((spec, conc), []).append((rate, per))
                print(f"round {r + 1} {spec} maxConcurrency {conc}: {rate:,.0f} messages/s, µs "
                      "per message: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
                      + f", total {sum(per.values()):.1f}", flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.n} messages each (µs of CPU per message)")
    print(f"{'binary':<40}{'conc':>5}{'msg/s':>9}" + "".join(f"{r:>14}" for r in ROLES)
          + f"{'total':>9}")
    for (spec, conc), runs in results.items():
        med = {k: statistics.median(p[k] for _, p in runs) for k in ROLES}
        total = statistics.median(sum(p.values()) for _, p in runs)
        rate = statistics.median(r for r, _ in runs)
        print(f"{spec[-40:]:<40}{conc:>5}{rate:>9,.0f}" + "".join(f"{med[k]:>14.1f}" for k in ROLES)
              + f"{total:>9.1f}")


if __name__ == "__main__":
    main()
