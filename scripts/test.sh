#!/usr/bin/env bash
# Runs Kappa's whole test suite: the runtimes' own tests, the Kubernetes chart and manifest
# verification, then every Rust test (unit, component and system tests that start the real
# `kappa up`), last, so its summary closes the run.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

run_rust_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@"
  else
    cargo test --no-fail-fast "$@"
  fi
}

echo "== python runtime tests"
python3 -m unittest discover -s functions/runtimes/python -p 'test_*.py'

echo "== binary runtime tests"
python3 -m unittest discover -s functions/runtimes/binary -p 'test_*.py'

echo "== web dashboard script syntax"
node --check --input-type=module < crates/api/ui/app.js

echo "== node.js runtime tests"
node --test functions/runtimes/nodejs/test_server.js

# The kube crate's tests write the objects its code builds to target/kube-manifests/, which
# the verification validates along with the chart.
echo "== kubernetes: objects built by the kube crate"
if cargo nextest --version >/dev/null 2>&1; then
  # Built with the whole workspace's features, so the full run below reuses every artifact.
  cargo nextest run --workspace --no-fail-fast -E 'package(kappa-kube)'
else
  cargo test --no-fail-fast -p kappa-kube
fi

echo "== kubernetes: chart lint, schema validation, snapshots"
scripts/k8s-verify.sh

echo "== kubernetes: cluster end-to-end (skipped without a cluster)"
tests/e2e/cluster.sh

echo "== rust tests"
run_rust_tests --workspace
