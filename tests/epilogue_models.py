"""Tiny ONNX models of one integer conv and its epilogue, as the exporter writes them (epilogue tests)."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def one_conv_model(path, activation: str):
    """input -> the exporter's quantize (shift, clip, Q, DQ) -> 1x1 conv of one channel (so its output y is
    (code - Z) x w: every code of 0..255 is a pixel of the 16 x 16 input) -> Mul, Add, the activation
    ("relu", or "hardswish" as the exporter writes it: x * clip(x + 3, 0, 6) / 6), Add, Clip, Q -> DQ.
    With relu, output channel 0 rounds y / 2: odd y are ties."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    out_ch, z_in, s_in = 16, 7, F32(0.1)
    inits = []
    # relu: codes 0..15 of step 1; hard-swish: steps of 1/16 from -0.5 (its dip to -0.375 has codes of its own)
    lo, hi, s_out, z_out = (0, 15, 1, 0) if activation == "relu" else (-0.5, 8, 0.0625, 8)

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    weight = np.array([1, -1, 2, -3, 5, -8, 7, 1, 3, -2, 4, 6, -5, 2, -7, 1], np.int8).reshape(out_ch, 1, 1, 1)
    # hard-swish: x over about -8 .. 8, so that every part of the ramp is met
    multiplier = rng.uniform(0.002, 0.05, out_ch).astype(F32) if activation == "relu" else \
        rng.uniform(0.005, 0.02, out_ch).astype(F32)
    multiplier[0] = 0.5
    bias = (0.3 * rng.standard_normal(out_ch)).astype(F32)
    bias[0] = 0.0
    nodes = [
        helper.make_node("Clip", ["input", const("lo", F32(-z_in * s_in)), const("hi", F32((255 - z_in) * s_in))],
                         ["clip0"]),
        helper.make_node("QuantizeLinear", ["clip0", const("s0", s_in), const("z0", np.uint8(z_in))], ["q0"]),
        helper.make_node("DequantizeLinear", ["q0", const("one", F32(1)), "z0"], ["dq0"]),
        helper.make_node("DequantizeLinear", [const("w", weight), "one", const("wz", np.int8(0))], ["wdq"]),
        helper.make_node("Conv", ["dq0", "wdq"], ["conv"]),
        helper.make_node("Mul", ["conv", const("m", multiplier.reshape(1, out_ch, 1, 1))], ["rescale"]),
        helper.make_node("Add", ["rescale", const("b", bias.reshape(1, out_ch, 1, 1))], ["add_bias"]),
        *_activation(activation, "add_bias", "activated", const),
        helper.make_node("Add", ["activated", const("shift", F32(0.0625))], ["shifted"]),
        helper.make_node("Clip", ["shifted", const("lo1", F32(lo)), const("hi1", F32(hi))], ["clip1"]),
        helper.make_node("QuantizeLinear", ["clip1", const("s1", F32(s_out)), const("z1", np.uint8(z_out))], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, activation, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_ch, 16, 16])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, (np.arange(256, dtype=F32).reshape(1, 1, 16, 16) - z_in) * s_in


def _activation(kind: str, x: str, out: str, const) -> list:
    from onnx import helper

    if kind == "relu":
        return [helper.make_node("Relu", [x], [out])]
    return [
        helper.make_node("Add", [x, const("three", F32(3))], ["plus3"]),
        helper.make_node("Clip", ["plus3", const("zero", F32(0)), const("six", F32(6))], ["relu6"]),
        helper.make_node("Mul", [x, "relu6"], ["times_x"]),
        helper.make_node("Div", ["times_x", "six"], [out]),
    ]
