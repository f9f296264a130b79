#!/usr/bin/env bash
# Installs qfa-deploy into a virtual environment (.venv, or $QFA_VENV) on a fresh Debian machine;
# the Docker image runs the same steps. Stock Debian 12 refuses pip on the system Python (PEP 668),
# so nothing is installed there. Every failure stops the script with a message.
# System packages, as root: python3-venv, the aarch64 cross compiler and qemu-user (ARM64 artifacts
# and the emulated Pi), debootstrap (the emulated Pi's root file system), llvm-16 (llvm-mc/llvm-mca:
# the ARM speed simulator, qfa_deploy/deploy/sim).
#
# Settings (environment): QFA_VENV (default .venv), QFA_INSTALL (what pip installs, default the
# editable checkout with the dev tools: "-e .[dev]"; the Docker image installs "."), QFA_WHEELHOUSE
# (install only from this folder of wheels, offline: what ci/docker.sh fills with `pip download`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QFA_VENV:-.venv}"
read -r -a spec <<< "${QFA_INSTALL:--e .[dev]}"
source_args=()
[ -n "${QFA_WHEELHOUSE:-}" ] && source_args=(--no-index --find-links "$QFA_WHEELHOUSE")

need_apt=()
python3 -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v llvm-mca-16 >/dev/null || need_apt+=(llvm-16)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: missing ${need_apt[*]} (needs root + apt-get); ARM64 tests will be skipped" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "error: 'python3 -m venv $venv' failed (apt-get install python3-venv)" >&2; exit 1; }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if ! "$venv/bin/python" -m pip install -q "${source_args[@]}" "${spec[@]}"; then
  echo "error: pip could not install qfa-deploy into $venv (see pip's message above)" >&2
  exit 1
fi
"$venv/bin/python" -c "import qfa_deploy, torch, onnxruntime, tvm" >/dev/null
echo "qfa-deploy installed in $venv: activate it with '. $venv/bin/activate'"
