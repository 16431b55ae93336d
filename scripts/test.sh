#!/usr/bin/env bash
# Runs Kappa's whole test suite: the Python runtime's tests, then every Rust test (unit,
# component and system tests that start the real `kappa up`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== python runtime tests"
python3 -m unittest discover -s functions/runtimes/python -p 'test_*.py'

echo "== rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
