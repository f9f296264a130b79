"""Squeeze-excite convs (float convs on a 1x1 map) with transposed weights: the naive build's bits."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
from deploy_helpers import FAST_PROTOCOL, artifact_dir, device_file
from onnx import TensorProto, helper, numpy_helper

from qfa_deploy.deploy import compile_artifact, load_device


@pytest.fixture(scope="module")
def fast_x86(tmp_path_factory):
    return device_file(tmp_path_factory.mktemp("devices"), "x86", name="x86-fast", protocol=FAST_PROTOCOL)


def _squeeze_excite(path, channels: int, reduced: int):
    """x [1, C, 4, 4] -> pool -> conv C->R, ReLU -> conv R->C: the float squeeze-excite of the exported
    subnets up to its hard sigmoid, with long sums (C = 512) so that a reordered sum would show in the
    bits. (The hard sigmoid and the scaling are left out: inlined into one expression, LLVM may
    contract their multiply and add, which the naive build's separate stages cannot.)"""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((reduced, channels, 1, 1)), "b1": rng.standard_normal(reduced),
               "w2": rng.standard_normal((channels, reduced, 1, 1)), "b2": rng.standard_normal(channels)}
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w1", "b1"], ["reduced"]),
        helper.make_node("Relu", ["reduced"], ["relu"]),
        helper.make_node("Conv", ["relu", "w2", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 1, 1])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("channels, reduced, transposed", [(512, 128, 2), (520, 40, 2), (512, 36, 1)])
def test_transposed_weights_keep_the_naive_bits(tmp_path, fast_x86, caplog, channels, reduced, transposed):
    """Both convs are rewritten where their output channels fill whole vectors (the 36-channel one
    is left as it was), their weights blocked in tiles of 4 vectors (512, 128) or 1 (520, 40: no
    wider tile divides them); the outputs equal TVM's naive build bit for bit."""
    from qfa_deploy.deploy.parity import random_inputs
    from qfa_deploy.deploy.runner import open_session

    onnx_path = _squeeze_excite(tmp_path / "se.onnx", channels, reduced)
    outputs = {}
    for schedule in ("tiled-cpu", "none"):
        folder = artifact_dir(tmp_path / schedule, onnx_path)
        with caplog.at_level(logging.INFO, logger="qfa_deploy"):
            meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
        with open_session(load_device(str(fast_x86))) as session:
            vm = session.load(folder / "model.so")
            outputs[schedule] = [session.run(vm, random_inputs(meta["inputs"], seed=s))[0] for s in range(3)]
    (log_line,) = [r.getMessage() for r in caplog.records if "read their weights transposed" in r.getMessage()]
    assert int(re.search(r"(\d+) read", log_line).group(1)) == transposed, log_line
    for tiled, naive in zip(outputs["tiled-cpu"], outputs["none"], strict=True):
        np.testing.assert_array_equal(tiled, naive)
