"""QDQ ONNX from a folded subnet (``qfa_deploy.fold``), built node by node with ``onnx.helper``.

Every quantized conv becomes (names are ``<conv>/<part>``, e.g. ``stage2/block1/expand/quant``)::

    x ─[Add c: quant/shift]─[Clip: quant/clip]─ QuantizeLinear(s, Z: uint8) ─ DequantizeLinear(1, Z)
      ─ Conv(W = DequantizeLinear(w_int8, 1, 0)) ─ Mul m: rescale ─ Add bias[, border map] ─[act]

which is ``qfa_deploy.nn.integer_conv`` op for op:

- The dequantized codes ``q - Z`` and weights ``w_int`` are integers held in float32, so the Conv's
  sums are exact in any order (onnxruntime's NCHWc kernels, TVM's tiles, PyTorch's oneDNN); the
  input scale, LSQ step and BN factor are the per-channel multiplier ``m`` of ``rescale``.
- ``quant/shift`` adds BatchQuant's real offset ``c`` before quantisation (absent when ``c == 0``);
  its effect after the conv is in the bias, which on a padded conv differs where taps meet the
  padding: there ``bias`` is a small table (channels x row classes x column classes), gathered by
  two constant index vectors (``bias/rows``, ``bias/map``) into the per-position bias.
- ``quant/clip`` restricts the uint8 container to the b-bit range ``[-Z s, (2^b - 1 - Z) s]``; the
  8-bit quantizers (stem, feature mix, classifier) saturate in QuantizeLinear itself.
- Weights are stored pre-quantized as int8 initializers on their b-bit grid; BatchNorm is gone
  (folded), SE stays float.
- The bias is an ``Add`` after the ``Mul``, not the Conv's third input: onnxruntime's default
  optimisations would fold a Conv bias into the integer accumulator (and a QDQ conv's bias to
  int32 at a coarse step), which is no longer the same arithmetic.

The graph input is ``input`` (float32 NCHW, batch symbolic unless fixed, at the subnet's
resolution), the output ``logits`` (float32 [N, classes]). ``metadata_props`` record the canonical
arch config, the space, a bits summary and the package versions. With ``expose_codes`` the uint8
output of every QuantizeLinear is also a graph output (named ``<conv>/quant``), for parity tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qfa_deploy.fold import FoldedBlock, FoldedConv, FoldedSE, FoldedSubnet

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "export_onnx",
    "model_metadata",
    "package_versions",
    "save_onnx",
    "with_code_outputs",
]

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = tuple(range(13, 22))  # per-channel DequantizeLinear needs 13; TVM 0.27 reads <= 23
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def package_versions() -> dict[str, str]:
    import torch

    import qfa_deploy

    return {"qfa_deploy": qfa_deploy.__version__, "torch": torch.__version__, "onnx": onnx.__version__}


class GraphBuilder:
    """Nodes and initializers with unique, readable names (a node's output tensor shares its name)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = {INPUT_NAME}

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate ONNX tensor name {name!r}")
        self._names.add(name)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), self._claim(name)))
        return name

    def shared_const(self, name: str, value: np.ndarray) -> str:
        """An initializer every node may read (created on first use)."""
        return name if name in self._names else self.const(name, value)

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        out = self._claim(output or name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def hard_gate(self, x: str, name: str) -> str:
        """``clip(x + 3, 0, 6)``: PyTorch's hard-sigmoid and hard-swish, before their last ops."""
        three, zero, six = (self.shared_const(f"const/{v}", np.float32(v)) for v in (3, 0, 6))
        y = self.node("Add", [x, three], f"{name}/plus3")
        return self.node("Clip", [y, zero, six], f"{name}/relu6")

    def act(self, x: str, act: str, name: str) -> str:
        if act == "relu":
            return self.node("Relu", [x], name)
        if act == "hswish":  # x * clip(x + 3, 0, 6) / 6, op for op as PyTorch computes it (not HardSwish's
            # x * clip(x / 6 + 0.5, 0, 1), which rounds differently and then moves codes)
            y = self.node("Mul", [x, self.hard_gate(x, name)], f"{name}/times_x")
            return self.node("Div", [y, self.shared_const("const/6", np.float32(6))], name)
        return x


def _quantized_conv(g: GraphBuilder, x: str, conv: FoldedConv, codes: list[str]) -> str:
    n, q = conv.name, conv.act_quant
    shift = g.const(f"{n}/quant/shift_value", np.float32(q.shift)) if q.shift != 0.0 else None
    if shift is not None:
        x = g.node("Add", [x, shift], f"{n}/quant/shift")
    if conv.needs_clip:
        lo, hi = conv.clip_range()
        x = g.node(
            "Clip",
            [
                x,
                g.const(f"{n}/quant/clip_min", np.float32(lo)),
                g.const(f"{n}/quant/clip_max", np.float32(hi)),
            ],
            f"{n}/quant/clip",
        )
    scale = g.const(f"{n}/quant/scale", np.float32(q.scale))
    zero_point = g.const(f"{n}/quant/zero_point", np.uint8(q.zero_point))
    code = g.node("QuantizeLinear", [x, scale, zero_point], f"{n}/quant")
    codes.append(code)
    one = g.const(f"{n}/unit_scale", np.float32(1.0))
    x = g.node("DequantizeLinear", [code, one, zero_point], f"{n}/dequant")  # q - Z, exact
    weight = g.node(
        "DequantizeLinear",
        [g.const(f"{n}/weight_int8", conv.weight), one, g.const(f"{n}/weight_zero_point", np.int8(0))],
        f"{n}/weight",
    )
    k, p, s = conv.kernel_size, conv.padding, conv.stride
    y = g.node(
        "Conv",
        [x, weight],
        f"{n}/conv",
        kernel_shape=[k, k],
        strides=[s, s],
        pads=[p, p, p, p],
        dilations=[1, 1],
        group=conv.groups,
    )
    y = g.node("Mul", [y, g.const(f"{n}/multiplier", conv.multiplier.reshape(-1, 1, 1))], f"{n}/rescale")
    bias = g.const(f"{n}/bias", conv.bias)
    if conv.border_classes:  # per-position bias: gather the table by each output row's and column's class
        bias = g.node("Gather", [bias, g.const(f"{n}/bias_rows", conv.bias_rows)], f"{n}/bias/rows", axis=1)
        bias = g.node("Gather", [bias, g.const(f"{n}/bias_cols", conv.bias_cols)], f"{n}/bias/map", axis=2)
    y = g.node("Add", [y, bias], f"{n}/add_bias")
    return g.act(y, conv.act, f"{n}/{conv.act}")


def _squeeze_excite(g: GraphBuilder, x: str, se: FoldedSE) -> str:
    n = se.name
    y = g.node("GlobalAveragePool", [x], f"{n}/pool")
    y = g.node(
        "Conv",
        [y, g.const(f"{n}/reduce_weight", se.reduce_weight), g.const(f"{n}/reduce_bias", se.reduce_bias)],
        f"{n}/reduce",
        kernel_shape=[1, 1],
    )
    y = g.node("Relu", [y], f"{n}/relu")
    y = g.node(
        "Conv",
        [y, g.const(f"{n}/expand_weight", se.expand_weight), g.const(f"{n}/expand_bias", se.expand_bias)],
        f"{n}/expand",
        kernel_shape=[1, 1],
    )
    gate = g.node("Div", [g.hard_gate(y, f"{n}/gate"), g.shared_const("const/6", np.float32(6))], f"{n}/gate")
    return g.node("Mul", [x, gate], f"{n}/scale")


def emit_stem(g: GraphBuilder, x: str, folded: FoldedSubnet, codes: list[str]) -> str:
    """The stem conv's nodes."""
    return _quantized_conv(g, x, folded.stem, codes)


def emit_block(g: GraphBuilder, x: str, block: FoldedBlock, codes: list[str]) -> str:
    """An MBConv block's nodes: [expand] -> depthwise -> [SE] -> project (+ residual)."""
    y = x if block.expand is None else _quantized_conv(g, x, block.expand, codes)
    y = _quantized_conv(g, y, block.depthwise, codes)
    if block.se is not None:
        y = _squeeze_excite(g, y, block.se)
    y = _quantized_conv(g, y, block.project, codes)
    return g.node("Add", [x, y], f"{block.name}/residual") if block.residual else y


def emit_head(g: GraphBuilder, x: str, folded: FoldedSubnet, codes: list[str]) -> str:
    """Final expand -> pool -> feature mix -> classifier (before the flatten)."""
    x = _quantized_conv(g, x, folded.final_expand, codes)
    x = g.node("GlobalAveragePool", [x], "head/pool")
    x = _quantized_conv(g, x, folded.feature_mix, codes)
    return _quantized_conv(g, x, folded.classifier, codes)


def export_onnx(
    folded: FoldedSubnet,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    expose_codes: bool = False,
) -> onnx.ModelProto:
    """The QDQ ONNX model of ``folded``; checked with ``onnx.checker`` (full check).

    Args:
        folded: from ``qfa_deploy.fold.fold``.
        opset: ONNX opset (13..21).
        batch: fixed batch size, or ``None`` for a symbolic ``batch`` dimension.
        expose_codes: also output the uint8 codes of every QuantizeLinear (for parity tests).
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} not supported (use one of {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[-1]})")
    g = GraphBuilder(opset)
    codes: list[str] = []
    x = emit_stem(g, INPUT_NAME, folded, codes)
    for block in folded.blocks:
        x = emit_block(g, x, block, codes)
    x = emit_head(g, x, folded, codes)
    g.node("Flatten", [x], "classifier/flatten", output=OUTPUT_NAME, axis=1)
    model = _model_of(g, folded, opset, batch)
    onnx.checker.check_model(model, full_check=True)
    return with_code_outputs(model) if expose_codes else model


def _model_of(g: GraphBuilder, folded: FoldedSubnet, opset: int, batch: int | None) -> onnx.ModelProto:
    """The model of ``g``'s nodes and initializers: input, logits output, producer and the ``qfa.*``
    metadata (``model_metadata``) describing ``folded``."""
    arch = folded.arch
    n = "batch" if batch is None else batch
    r = arch.resolution
    classes = folded.classifier.out_channels
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [n, classes])]
    graph = helper.make_graph(
        g.nodes,
        f"qfa_{arch.space}_{arch.digest()}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [n, 3, r, r])],
        outputs,
        initializer=g.initializers,
        doc_string=f"{arch.space} {arch.short()}",
    )
    opset_import = [helper.make_opsetid("", opset)]
    versions = package_versions()
    model = helper.make_model(
        graph,
        opset_imports=opset_import,
        ir_version=helper.find_min_ir_version_for(opset_import),
        producer_name="qfa-deploy",
        producer_version=versions["qfa_deploy"],
        doc_string="QDQ export of a BatchQuant/QFA subnet (uint8 activations, int8 weights)",
    )
    helper.set_model_props(
        model,
        {
            "qfa.arch": arch.canonical_json(),
            "qfa.arch_digest": arch.digest(),
            "qfa.space": arch.space,
            "qfa.resolution": str(r),
            "qfa.bits": json.dumps(folded.bits_summary(), sort_keys=True, separators=(",", ":")),
            "qfa.versions": json.dumps(versions, sort_keys=True, separators=(",", ":")),
            "qfa.input": INPUT_NAME,
            "qfa.output": OUTPUT_NAME,
        },
    )
    return model


def with_code_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the uint8 codes of every QuantizeLinear (in graph
    order, named after the node: ``<conv>/quant``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    codes = [n.output[0] for n in out.graph.node if n.op_type == "QuantizeLinear"]
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    info = {v.name: v for v in inferred.graph.value_info}
    out.graph.output.extend(info[c] for c in codes)
    onnx.checker.check_model(out, full_check=True)
    return out


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (a single file: the models are small, no external data)."""
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``metadata_props`` of ``model`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}
