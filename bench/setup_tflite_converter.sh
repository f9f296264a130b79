#!/usr/bin/env bash
# The TFLite converter for bench/tflite_peer.py, in a venv of its own (not a dependency of qfa-deploy).
#
#   bash bench/setup_tflite_converter.sh [VENV]
#
# VENV defaults to $QFA_TFLITE_VENV, else $QFA_CACHE/tflite-conv, else ~/.cache/qfa-deploy/tflite-conv:
# the place bench/tflite_peer.py looks for it. onnx2tf 1.29.24 pins its whole stack (tensorflow 2.19.0,
# tf-keras 2.19.0, onnx 1.19.1, onnxruntime 1.23.0, numpy 1.26.4, ...), about 1.5 GB installed,
# which is why it stays out of the project's own environment. Needs Python 3.9-3.12 (onnx2tf 2.x
# wants 3.12+ and is not what this was checked with); $PYTHON picks the interpreter.
set -euo pipefail

cache="${QFA_CACHE:-$HOME/.cache/qfa-deploy}"
venv="${1:-${QFA_TFLITE_VENV:-$cache/tflite-conv}}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
    done
fi
if [ -z "$python" ]; then
    echo "setup_tflite_converter: no python3 found (set PYTHON)" >&2
    exit 1
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "onnx2tf==1.29.24"
"$venv/bin/python" - <<'EOF'
import onnx2tf
import tensorflow as tf

print(f"TFLite converter ready: onnx2tf {onnx2tf.__version__}, tensorflow {tf.__version__}")
EOF
echo "venv: $venv"
