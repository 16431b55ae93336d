#!/usr/bin/env bash
# Kappa's benchmark: builds the release binary, installs nginx and wrk when missing, and prints
# Kappa's figures next to their baselines measured in the same run (see docs/benchmarks.md).
# Pass --quick for a short smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin kappa
exec python3 scripts/bench.py "$@"
