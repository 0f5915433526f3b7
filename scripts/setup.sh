#!/usr/bin/env bash
# Installs everything closurepack, its example and its tests need on Debian (bookworm or later):
# the real tools the tests drive (Nix, podman, Docker, skopeo, umoci, runc, a registry, containerd,
# htpasswd for registry auth tests, openssl for the TLS ones, chromium for the --html pages, fakeroot
# for --fakeroot-script; isal (igzip) for bench/build_bench.py's reference rows) from apt,
# and closurepack itself with its test tools into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
packages=(
  python3 python3-venv python3-pip git
  nix-bin busybox-static
  podman skopeo umoci runc uidmap docker.io docker-registry containerd apache2-utils openssl
  tar gzip pigz zstd isal curl chromium fakeroot
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ok (.venv ready; activate with: . .venv/bin/activate)" >&2
