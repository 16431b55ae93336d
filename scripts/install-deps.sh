#!/usr/bin/env bash
# Installs the system packages Kappa's tests and benchmarks use, when they are missing
# (slirp4netns gives sandboxed functions egress; the sandbox itself is built into kappa).
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(slirp4netns python3 python3-pip nodejs nginx-light wrk hyperfine python3-venv unzip nats-server redis-server chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm (the Node.js default build): Debian packages it apart from nodejs, NodeSource's nodejs
# bundles it (and conflicts with the npm package), so only the missing command asks for it.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tansu: a Kafka-protocol broker written in Rust, which the Kafka trigger tests start (no
# Apache Kafka package is in the registries these machines reach). The tests look for it on
# PATH, then in ~/.cargo/bin.
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
  echo "installing tansu (Kafka-protocol broker for the Kafka tests) with cargo install; this takes several minutes"
  cargo install --locked tansu --features dynostore
fi
# The web dashboard's browser test (tests/ui) drives Chromium with playwright-core from npm,
# pinned by tests/ui/package-lock.json; installed again only when the lock file is newer than
# what npm installed.
ui_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/ui"
if [ -f "$ui_dir/package-lock.json" ] && ! [ "$ui_dir/node_modules/.package-lock.json" -nt "$ui_dir/package-lock.json" ]; then
  echo "installing tests/ui (npm ci)"
  (cd "$ui_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
