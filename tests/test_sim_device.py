"""A simulated device end to end on this host: a library compiled for x86 AVX2 (what qemu-x86_64 runs)
is profiled through a ``{"kind": "simulated", "cpu": "znver4"}`` runner; the figure is labelled
simulated, computes no outputs, breaks down by function with ``--layers``, and a bad runner field is a
one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
from deploy_helpers import artifact_dir, ort_qdq_model, run_cli

from qfa_deploy.deploy import compile_artifact, profile_artifact
from qfa_deploy.deploy.profile import SIMULATED_LABEL

AVX2_SIM = {"version": 1, "name": "x86-avx2-sim", "description": "x86 AVX2, simulated as znver4",
            "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, "cc": None,
            "runner": {"kind": "simulated", "cpu": "znver4"}, "threads": 1,
            "protocol": {"warmup": 0, "number": 1, "repeat": 1, "min_repeat_ms": 0}, "emulated": True}


@pytest.mark.slow  # qemu runs the interpreter's start-up through the cache model (~1-4 min)
def test_profile_through_a_simulated_runner(tmp_path):
    missing = [t for t in ("qemu-x86_64", "llvm-mca-16", "gcc") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    device = tmp_path / "x86-avx2-sim.json"
    device.write_text(json.dumps(AVX2_SIM))
    folder = artifact_dir(tmp_path / "art", ort_qdq_model(tmp_path / "model.onnx", resolution=16))
    compile_artifact(folder / "model.onnx", str(device), folder)
    result = profile_artifact(folder, str(device), layers=True)
    assert result["timing"] == SIMULATED_LABEL and result["parity"] is None
    cycles_ms = result["latency_ms"]["median"]
    assert 0 < cycles_ms < 50  # a 16x16 conv net: well under a millisecond of cycles, in any case not 0
    # --layers: the same cycles, by function (the model's own named without their library)
    layers = result["layers"]
    assert layers["source"].startswith("simulated cycles (znver4")
    assert 0.5 < layers["sum_ms"] / cycles_ms < 2, (layers["sum_ms"], cycles_ms)
    kinds = {k["kind"] for k in layers["kinds"]}
    assert "global pooling" in kinds and kinds & {"1x1 conv, integer", "conv, float", "depthwise conv on codes"}
    assert any(f["function"].startswith("fused_") for f in layers["functions"])


def test_simulated_runner_needs_a_known_cpu(tmp_path):
    bad = dict(AVX2_SIM, runner={"kind": "simulated", "cpu": "pentium"})
    device = tmp_path / "bad.json"
    device.write_text(json.dumps(bad))
    result = run_cli("profile", str(tmp_path), "--device", str(device))
    assert result.returncode != 0
    assert "runner.cpu must be one of" in result.stderr and "Traceback" not in result.stderr
