#!/usr/bin/env bash
# Runs Kappa's whole test suite: the Python runtime's tests, then every Rust test (unit,
# component and system tests that start the real `kappa up`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== python runtime tests"
python3 -m unittest discover -s functions/runtimes/python -p 'test_*.py'

echo "== binary runtime tests"
python3 -m unittest discover -s functions/runtimes/binary -p 'test_*.py'

echo "== node.js runtime tests"
node --test functions/runtimes/nodejs/test_server.js

echo "== rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# After the Rust tests: the kube crate's tests write the objects its code builds to
# target/kube-manifests/, which the verification validates too.
echo "== kubernetes: chart lint, schema validation, snapshots"
scripts/k8s-verify.sh

echo "== kubernetes: cluster end-to-end (skipped without a cluster)"
tests/e2e/cluster.sh
