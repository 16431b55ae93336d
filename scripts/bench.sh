#!/usr/bin/env bash
# Kappa's benchmark: builds the release binary, installs nginx, HAProxy and wrk when missing, and prints
# Kappa's figures next to their baselines measured in the same run (see docs/benchmarks.md).
# Pass --quick for a short smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# HAProxy is a baseline of the benchmark only, and valgrind counts the router's instructions per
# request in section (a) (the tests need neither).
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ] || ! command -v valgrind >/dev/null 2>&1; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends haproxy valgrind >/dev/null
fi
cargo build --release --bin kappa --bin kappa-sandbox
exec python3 scripts/bench.py "$@"
