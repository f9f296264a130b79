#!/usr/bin/env bash
# Build (or update) a latency table on a device, validate it, fail under the threshold.
#
#   ci/latency-tables.sh --device rasp4b --space qfa-mbv3-w1.2 --resolution 224 \
#       --out latency_tables/rasp4b-qfa-mbv3-w1.2-r224.json [--workers 4] [--min-within 0.95] [--tolerance 10]
#   ci/latency-tables.sh --emulated ...   # start the emulated Raspberry Pi and use it (not latency)
#   ci/latency-tables.sh --smoke [--out T] # small, fast run on this host (what .ci/run does; the table
#                                          # goes to a temporary folder unless --out says where)
#
# The device profile (devices/NAME.json) says where it runs: locally, or on the boards registered
# under a key at an RPC tracker; the script waits until the key has a board. The build is resumable
# (a journal beside the table), so a killed CI job continues on rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

device=x86 space=qfa-mbv3-cifar10 resolution=32 out="" workers=1 fit=20 samples=50 min_within=0.95 tolerance=10
emulated=0 smoke=0 wait_s=600
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --space) space=$2; shift 2 ;;
    --resolution) resolution=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --fit-samples) fit=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --min-within) min_within=$2; shift 2 ;;
    --tolerance) tolerance=$2; shift 2 ;;
    --wait) wait_s=$2; shift 2 ;;
    --emulated) emulated=1; device=rasp4b-emulated; shift ;;
    --smoke) smoke=1; shift ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$smoke" = 1 ]; then
  # Small and quick: the real commands on this host, the CIFAR space at 24 px, loose threshold
  # (a shared CI machine is noisy); the table goes to a temporary folder. x86-1t: one runtime
  # thread and the minimum over repeats, the profile that tolerates neighbours best. It still needs
  # a machine of its own (as CI is): run on a core shared with a training job, the gate failed
  # with either profile (x86 MAPE 198%, x86-1t 51%), while a 3-subnet fit on clean x86-1t
  # measurements passes it (99.9% of 3000 draws from the committed r32 validation points).
  # Tolerance ±20%: on a quiet host the validation run right after the build measured all four
  # subnets 4-17% slower than the same table's re-validations minutes later (MAPE 9.6-12% vs
  # 1.7-2.9%): a drift of the host, not of the table. A broken table (a missing part, a wrong fit)
  # is off by far more.
  device=x86-1t space=qfa-mbv3-cifar10 resolution=24 fit=3 samples=4 min_within=0.5 tolerance=20
  out="${out:-$work/smoke-table.json}"
fi
[ -n "$out" ] || out="latency_tables/${device}-${space}-r${resolution}.json"

if [ "$emulated" = 1 ]; then
  qfa-deploy emulated-pi build
  qfa-deploy emulated-pi serve --port 9190 --key rasp4b-emu > "$work/pi.log" 2>&1 &
  pids+=($!)
fi

# Wait for the device's runner (a no-op for local devices): profile answers once a board is free.
deadline=$((SECONDS + wait_s))
reachable() {
  python3 -c 'import sys
from qfa_deploy.deploy.device import load_device
from qfa_deploy.deploy.runner import open_session
open_session(load_device(sys.argv[1]), timeout=10).close()' "$device"
}
until reachable >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    echo "error: device $device not reachable after ${wait_s}s" >&2
    reachable >&2 || true
    exit 1
  fi
  sleep 5
done

qfa-deploy lut build --device "$device" --space "$space" --resolution "$resolution" -o "$out" \
  --fit-samples "$fit" --workers "$workers"
report="${out%.json}.validation.json"
qfa-deploy lut validate --table "$out" --device "$device" --samples "$samples" --seed 1 \
  --report "$report" --min-within "$min_within" --tolerance "$tolerance"
echo "latency table $out validated (report: $report)"
