#!/usr/bin/env bash
# Installs everything qfa-deploy needs on a fresh Debian machine (also the Docker image's steps).
# System packages: the aarch64 cross compiler and qemu-user (ARM64 artifacts and the emulated Pi).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: missing ${need_apt[*]} (needs root + apt-get); ARM64 tests will be skipped" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v -E "^WARNING: Running pip as the 'root' user|^$" || true
python3 -c "import qfa_deploy, torch, onnxruntime, tvm" >/dev/null
echo "qfa-deploy installed: $(command -v qfa-deploy)"
