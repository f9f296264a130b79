#!/usr/bin/env bash
# Make a Debian bookworm base image for the Dockerfile when no registry is reachable:
# debootstrap (minbase) into a temporary folder, then `docker import` it as $1 (default
# qfa-deploy-base:bookworm). Needs root, debootstrap and a Debian mirror (apt's own, by default).
#
#   bash ci/docker-base.sh [IMAGE] [MIRROR]
set -euo pipefail
image=${1:-qfa-deploy-base:bookworm}
mirror=${2:-http://deb.debian.org/debian}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# the same Debian sources in the image as used here, and no leftover package cache
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2>/dev/null && rm -f "$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "base image $image imported ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}'))"
