#!/usr/bin/env python3
"""Counts per warm-pool first request, for A/B runs on a loaded machine where the wall clock
cannot resolve a change (docs/benchmarks.md, "Warm-pool first request: where the time goes").

    KAPPA_BIN=path/to/kappa python3 scripts/warm_counts.py [none|namespaces] [N] [--strace]

Runs `kappa up --sandbox MODE` with a Python environment (poolsize 3) and N functions, then for
each function's first request reads, just before and just after it (from /proc): the context
switches of kappa's threads (voluntary, involuntary), and the minor page faults of kappa and of
the two processes under kappa that took the most (the instance's runtime that served it, then
the template or another instance). With --strace, kappa's system
calls during the request are counted too (`strace -f -c`, attached before the request), which
slows it down: read only its counts. Prints one line per request and the medians."""
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def children_map():
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(p))
    return kids


def descendants(pid):
    kids, out, stack = children_map(), [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def thread_switches(pid):
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


def minor_faults(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return int(s[s.rindex(")") + 2:].split()[7])
    except OSError:
        return 0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    use_strace = "--strace" in sys.argv
    mode = args[0] if args else "none"
    n = int(args[1]) if len(args) > 1 else 8
    workdir = tempfile.mkdtemp(prefix="kappa-warm-counts-")
    kappa = bench.Kappa(workdir, extra=["--sandbox", mode])
    pid = kappa.proc.pid
    rows = []
    try:
        hello = os.path.join(bench.ROOT, "functions", "examples", "hello", "hello.py")
        kappa.cli("env", "create", "--name", "python", "--image", "python", "--poolsize", "3")
        for i in range(n):
            kappa.cli("fn", "create", "--name", f"cw{i}", "--env", "python", "--code", hello)
            kappa.cli("route", "create", "--url", f"/cw{i}", "--function", f"cw{i}")
        time.sleep(3)  # let the warm pool fill
        for i in range(n):
            others = [p for p in descendants(pid) if p != pid]
            tracer = None
            if use_strace:
                out = os.path.join(workdir, f"strace-{i}.txt")
                tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                                          stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            faults = {p: minor_faults(p) for p in others}
            k_faults, (vol, invol) = minor_faults(pid), thread_switches(pid)
            ms = bench.first_request_ms(kappa.router, f"/cw{i}")
            vol2, invol2 = thread_switches(pid)
            k_faults2 = minor_faults(pid)
            # The instance that served it faults most; the next is the template (sandboxed, when
            # a refill forked in the window) or another process.
            top = sorted((minor_faults(p) - f for p, f in faults.items()), reverse=True) + [0, 0]
            calls = None
            if tracer:
                tracer.send_signal(signal.SIGINT)
                tracer.wait()
                with open(out) as f:
                    total = [line for line in f if line.strip().endswith("total")]
                calls = int(total[0].split()[2]) if total else None
            row = {"ms": ms, "vol": vol2 - vol, "invol": invol2 - invol,
                   "kappa_faults": k_faults2 - k_faults, "runtime_faults": top[0], "next_faults": top[1],
                   "syscalls": calls}
            rows.append(row)
            print(f"request {i}: " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else
                                              f"{k} {v}" for k, v in row.items()), flush=True)
            time.sleep(1.0)  # let the pool refill
    finally:
        kappa.stop()
        subprocess.run(["chmod", "-R", "u+w", workdir], check=False)
        subprocess.run(["rm", "-rf", workdir], check=False)
    print("medians: " + "  ".join(
        f"{k} {statistics.median(r[k] for r in rows)}" for k in rows[0]
        if all(r[k] is not None for r in rows)))


if __name__ == "__main__":
    main()
