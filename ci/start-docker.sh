#!/usr/bin/env bash
# Make a Docker daemon answer: nothing to do if one does; else, as root, install Debian's docker.io
# if dockerd is missing and start it in the background (its PID in $1, default /tmp/qfa-dockerd.pid).
# Exit 1, with the reason on stderr, when no daemon can be had here.
set -euo pipefail
pidfile=${1:-/tmp/qfa-dockerd.pid}
docker info >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then echo "no Docker daemon, and starting one needs root" >&2; exit 1; fi
if ! command -v dockerd >/dev/null; then
  command -v apt-get >/dev/null || { echo "no dockerd and no apt-get to install docker.io" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 \
    || { echo "apt-get could not install docker.io" >&2; exit 1; }
fi
dockerd > /tmp/qfa-dockerd.log 2>&1 &
echo $! > "$pidfile"
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "dockerd did not answer within 60 s (log: /tmp/qfa-dockerd.log)" >&2
exit 1
