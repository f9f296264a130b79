"""Clip bounds as immediates (targets.cpu.clip_immediates): same outputs, no bound left as a tensor."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")


def _clip_model():
    """x -> Clip(x, -1.5, 6) -> Clip(., 0.25, +inf: no max) -> y, as an exporter writes a hard-swish's clip."""
    from onnx import TensorProto, helper

    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("lo", -1.5), ("hi", 6.0), ("lo2", 0.25))]
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Clip", ["c", "lo2", ""], ["y"])]
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(mod, x):
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_clip_bounds_become_immediates_with_the_same_outputs():
    from tvm.relax.frontend.onnx import from_onnx

    from qfa_deploy.deploy.targets.cpu.clip_immediates import clip_bounds_as_immediates

    mod = from_onnx(_clip_model(), keep_params_in_input=False)
    assert "R.call_tir(cls.maximum," in mod.script()
    rewritten = clip_bounds_as_immediates(mod)
    script = rewritten.script()
    assert "R.call_tir(cls.maximum," not in script and "R.call_tir(cls.minimum," not in script
    assert script.count("R.call_tir(cls.maximum_imm") == 2 and script.count("R.call_tir(cls.minimum_imm") == 1
    x = np.random.default_rng(0).uniform(-10, 10, (1, 4, 8, 8)).astype(np.float32)
    x.reshape(-1)[:6] = [-1.5, 6.0, 0.25, -0.0, 0.0, 6.0000005]  # on and beside the bounds
    got, expected = _run(rewritten, x), _run(mod, x)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(expected, np.maximum(np.clip(x, -1.5, 6.0), 0.25))
