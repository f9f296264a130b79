"""Measure an ONNX model on a device: compile with TVM, load through the device's runner, time."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx

from qfa_deploy.deploy.compile import compile_artifact
from qfa_deploy.deploy.device import Device
from qfa_deploy.deploy.runner import Session

__all__ = ["measure_onnx"]

# tvm.compile is not known to be thread-safe; boards measure in parallel, compiles take turns.
_COMPILE_LOCK = threading.Lock()


def measure_onnx(model: onnx.ModelProto, device: Device, session: Session, schedule: str, seed: int = 0) -> dict:
    """Median / p10 / p90 latency (ms) of ``model`` (batch 1, float32 input) on ``session``, compiled
    with ``schedule`` (``compile_artifact``'s)."""
    with tempfile.TemporaryDirectory(prefix="qfa-lut-") as tmp:
        onnx_path = Path(tmp) / "part.onnx"
        onnx_path.write_bytes(model.SerializeToString())
        with _COMPILE_LOCK:
            meta = compile_artifact(onnx_path, device, Path(tmp), schedule=schedule)
        vm = session.load(Path(tmp) / meta["library"])
        shape = [int(d) for d in meta["inputs"][0]["shape"]]
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        timing = session.time(vm, [x])
    return timing.summary_ms()
