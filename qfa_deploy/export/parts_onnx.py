"""QDQ ONNX of one part of a folded subnet (stem, one block, head), for latency tables.

A part is exported with exactly the nodes the whole-subnet export emits for it, so that the
latency measured for a part is that of the deployed graph's piece.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from qfa_deploy.export.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    GraphBuilder,
    emit_block,
    emit_head,
    emit_stem,
)
from qfa_deploy.fold import FoldedSubnet
from qfa_deploy.space import spatial_sizes

__all__ = ["export_part_onnx"]


def export_part_onnx(
    folded: FoldedSubnet, part: str, index: int | None = None, batch: int = 1, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """``part`` is "stem" (stem conv + first block), "block" (``folded.blocks[index]``) or "head"."""
    g = GraphBuilder(opset)
    codes: list[str] = []
    arch = folded.arch
    sp = arch.search_space
    _, sizes, head_size = spatial_sizes(sp, arch.resolution)
    if part == "stem":
        in_shape = [batch, 3, arch.resolution, arch.resolution]
        x = emit_block(g, emit_stem(g, INPUT_NAME, folded, codes), folded.blocks[0], codes)
        out_shape = [batch, folded.blocks[0].project.out_channels, sizes[0], sizes[0]]
    elif part == "block":
        block = folded.blocks[index]
        first = block.expand if block.expand is not None else block.depthwise
        size = sizes[arch.active_blocks()[index - 1]]
        in_shape = [batch, first.weight.shape[1] * first.groups, size, size]
        x = emit_block(g, INPUT_NAME, block, codes)
        out_size = -(-size // block.depthwise.stride)
        out_shape = [batch, block.project.out_channels, out_size, out_size]
    elif part == "head":
        in_shape = [batch, folded.final_expand.weight.shape[1], head_size, head_size]
        x = emit_head(g, INPUT_NAME, folded, codes)
        out_shape = [batch, folded.classifier.out_channels, 1, 1]
    else:
        raise ValueError(f"unknown part {part!r}")
    g.node("Identity", [x], f"{part}/output", output=OUTPUT_NAME)
    graph = helper.make_graph(
        g.nodes,
        f"qfa_part_{part}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model
