"""Measure an ONNX model on a device: compile with TVM, load through the device's runner, time."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx

from qfa_deploy.deploy.compile import compile_artifact
from qfa_deploy.deploy.cpu_share import over_limit
from qfa_deploy.deploy.device import Device
from qfa_deploy.deploy.runner import Session

__all__ = ["ATTEMPTS", "measure_onnx"]

log = logging.getLogger(__name__)
ATTEMPTS = 3  # timings of one model at most, while other work shares its CPUs
# tvm.compile is not known to be thread-safe; boards measure in parallel, compiles take turns.
_COMPILE_LOCK = threading.Lock()


def measure_onnx(model: onnx.ModelProto, device: Device, session: Session, schedule: str, seed: int = 0) -> dict:
    """Median / p10 / p90 / min ... latency (ms) of ``model`` (batch 1, float32 input) on ``session``,
    compiled with ``schedule`` (``compile_artifact``'s); on this machine also ``foreign_cpu``, the share
    of the measuring CPUs other work took meanwhile (timed again, up to ``ATTEMPTS`` times, while it is
    over ``cpu_share.FOREIGN_CPU_LIMIT``; a warning when it stays so)."""
    with tempfile.TemporaryDirectory(prefix="qfa-lut-") as tmp:
        onnx_path = Path(tmp) / "part.onnx"
        onnx_path.write_bytes(model.SerializeToString())
        with _COMPILE_LOCK:
            meta = compile_artifact(onnx_path, device, Path(tmp), schedule=schedule)
        vm = session.load(Path(tmp) / meta["library"])
        shape = [int(d) for d in meta["inputs"][0]["shape"]]
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        timings = [session.time(vm, [x])]
        # a timing during which other work took a share of the CPUs stretched every repeat: again,
        # keeping the least shared one (``deploy.cpu_share``)
        while over_limit(timings[-1].foreign_cpu) and len(timings) < ATTEMPTS:
            timings.append(session.time(vm, [x]))
    best = min(timings, key=lambda t: t.foreign_cpu or 0.0)
    if over_limit(best.foreign_cpu):
        log.warning("measured while other work took %.0f%% of the measuring CPUs (%d tries): this latency is "
                    "too high; measure on a core of its own", 100 * best.foreign_cpu, len(timings))
    return best.summary_ms()
