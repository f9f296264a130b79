#!/usr/bin/env bash
# Build the CI image and run the latency-table job's smoke mode inside it; the table and its
# validation report land in a mounted folder. Works with no image registry: the base image then
# comes from debootstrap (ci/docker-base.sh) and the Python packages from a wheelhouse filled here
# with pip (PyPI, or whatever index pip is configured with).
#
#   bash ci/docker.sh [--out DIR] [--image NAME] [--keep-wheelhouse]
#
# A CI system runs the same script on a runner with Docker (GitHub Actions: `runs-on: ubuntu-latest`,
# step `run: bash ci/docker.sh --out tables`; GitLab: a job with the docker:dind service, same line).
set -euo pipefail
cd "$(dirname "$0")/.."

image=qfa-deploy:ci out=docker-out keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --keep-wheelhouse) keep=1; shift ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
docker info >/dev/null 2>&1 || { echo "error: no Docker daemon answers (start dockerd)" >&2; exit 1; }
python=${PYTHON:-python3}

# 1. The base: the registry's image where it can be pulled, else a debootstrapped Debian bookworm.
base=python:3.11-slim-bookworm
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$base" >/dev/null 2>&1; then
  echo "registry image $base not reachable: using a debootstrap base"
  base=qfa-deploy-base:bookworm
  bash ci/docker-base.sh "$base"
fi

# 2. The wheelhouse: this project and its dependencies as wheels, plus the build backend. torch is
# the CPU build where pip finds one (a CUDA build is several GB the image does not need).
cleanup() { [ "$keep" = 1 ] || rm -rf wheelhouse; }
trap cleanup EXIT
mkdir -p wheelhouse
torch=torch
if "$python" -m pip download -q --no-deps -d wheelhouse 'torch==2.13.0+cpu' >/dev/null 2>&1; then
  torch='torch==2.13.0+cpu'
fi
"$python" -m pip download -q -d wheelhouse 'setuptools>=68' wheel
"$python" -m pip wheel -q -w wheelhouse . "$torch"
rm -f wheelhouse/qfa_deploy-*.whl  # the image installs the checkout it copies

# 3. Build, then the smoke job inside, writing to the mounted folder. --force-rm: a failed step
# leaves no stopped container behind; the prune drops the previous build's images and stages, now
# untagged (only ours: the Dockerfile labels them), before the build too, after a failed one.
prune() { docker image prune -f --filter label=org.qfa-deploy.ci-image >/dev/null; }
prune
docker build -q --force-rm --build-arg BASE="$base" -t "$image" . >/dev/null
prune
echo "image $image built from $base ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}'))"
mkdir -p "$out"
docker run --rm -v "$(realpath "$out")":/out --entrypoint bash "$image" \
  ci/latency-tables.sh --smoke --out /out/smoke-table.json
docker run --rm "$image" info --space qfa-mbv3-cifar10
echo "smoke table and its validation in $out/"
