"""A k x k conv of one group (the stem) as a 1x1 integer conv of its patches (targets.cpu.integer._as_patches)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from deploy_helpers import compile_x86_beside_onnxruntime

F32 = np.float32


def _stem_model(path, size: int, stride: int, zero: int):
    """input -> Add(shift) -> Q -> DQ(1, Z) -> Conv(DQ(int8 w, 1, 0)) 3x3, padding 1: the exporter's stem
    up to its integer sums (its epilogue's float multiply-add may be contracted into an FMA by TVM's LLVM
    back end, docs/deploy.md, which is not what this tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(size + stride)
    inits = []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    out_ch = 12
    weight = rng.integers(-127, 128, (out_ch, 3, 3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("Add", ["input", const("shift", F32(0.01))], ["shifted"]),
        helper.make_node("QuantizeLinear", ["shifted", const("s", F32(0.02)), const("z", np.uint8(zero))], ["q"]),
        helper.make_node("DequantizeLinear", ["q", const("one", F32(1)), "z"], ["dq"]),
        helper.make_node("DequantizeLinear", [const("w", weight), "one", const("wz", np.int8(0))], ["wdq"]),
        helper.make_node("Conv", ["dq", "wdq"], ["output"], pads=[1, 1, 1, 1], strides=[stride, stride]),
    ]
    out_size = (size + 2 - 3) // stride + 1
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_ch, out_size, out_size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("size, stride, zero", [(16, 2, 128), (15, 2, 3), (9, 1, 200)])
def test_patches_conv_equals_onnxruntime(tmp_path, caplog, size, stride, zero):
    """The stem runs as a 1x1 integer conv (log) and its sums equal onnxruntime's exactly: odd sizes (the
    last patch half outside), the padding as the zero point's code, strides 1 and 2."""
    onnx_path = _stem_model(tmp_path / "stem.onnx", size, stride, zero)
    image = np.random.default_rng(size).uniform(-3, 3, (1, 3, size, size)).astype(F32)
    got, want, line = compile_x86_beside_onnxruntime(tmp_path, onnx_path, image, caplog, "integer convs (")
    assert re.search(r": (\d+) 1x1 convs", line).group(1) == "1", line
    np.testing.assert_array_equal(got, want)
