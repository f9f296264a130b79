"""The numerical reference for a compiled model: onnxruntime with graph optimisations off.

ORT's own optimised integer kernels differ from the QDQ graph's arithmetic (up to ~1e-2 on
outputs of magnitude 0.2); with ``ORT_DISABLE_ALL`` it evaluates QuantizeLinear/DequantizeLinear
as written, which is what TVM compiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qfa_deploy.deploy._text import one_line
from qfa_deploy.errors import QfaError

__all__ = ["REFERENCE_NAME", "compare_outputs", "onnxruntime_outputs", "random_inputs"]

REFERENCE_NAME = "onnxruntime CPU, ORT_DISABLE_ALL"


def random_inputs(specs: list[dict], seed: int = 0) -> list[np.ndarray]:
    """One standard-normal array per input spec ({"name", "shape", "dtype"}), reproducible by seed."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        dtype = np.dtype(spec.get("dtype", "float32"))
        if dtype.kind != "f":
            raise QfaError(f"input {spec['name']!r} has dtype {dtype}; only float inputs are supported")
        arrays.append(rng.standard_normal(spec["shape"]).astype(dtype))
    return arrays


def onnxruntime_outputs(onnx_path: Path, specs: list[dict], inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``onnx_path`` in onnxruntime (CPU, one thread, no graph optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {spec["name"]: x for spec, x in zip(specs, inputs, strict=True)})
    except Exception as exc:
        raise QfaError(f"onnxruntime cannot run {onnx_path}: {one_line(exc)}") from None


def compare_outputs(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Max abs difference over all outputs, and whether the first output's argmax agrees per row."""
    if len(outputs) != len(reference):
        raise QfaError(f"the device returned {len(outputs)} outputs, onnxruntime {len(reference)}")
    max_abs = 0.0
    for ours, ref in zip(outputs, reference, strict=True):
        if ours.shape != ref.shape:
            raise QfaError(f"output shape {list(ours.shape)} differs from onnxruntime's {list(ref.shape)}")
        if ours.size:
            max_abs = max(max_abs, float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))))
    first, first_ref = outputs[0], reference[0]
    rows = first.reshape(first.shape[0], -1) if first.ndim > 1 else first.reshape(1, -1)
    rows_ref = first_ref.reshape(rows.shape)
    agree = rows.argmax(axis=1) == rows_ref.argmax(axis=1)
    return {
        "reference": REFERENCE_NAME,
        "max_abs_diff": max_abs,
        "bit_exact": all(np.array_equal(o, r) for o, r in zip(outputs, reference, strict=True)),
        "argmax_agree": bool(agree.all()),
        "argmax_agree_fraction": float(agree.mean()),
    }
