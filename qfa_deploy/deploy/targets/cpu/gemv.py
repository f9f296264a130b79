"""Squeeze-excite convs (float 1x1 convs on a 1x1 map) read their weights transposed.

Such a conv is a matrix-vector product: ``y[o] = sum_c x[c] * W[o, c]``. Its schedule puts a tile of
``gemv_tile`` output channels (a few vectors) in registers and runs the sum over C outside it
(``targets.cpu.tiled``). With the weights in ONNX's [O, C] layout each vector load gathered its lanes
from as many rows; stored [C, O], each step of the sum read the tile's 128 bytes one row (4*O bytes)
after the last, which the hardware prefetchers follow poorly: a w1.2 subnet's squeeze-excite GEMVs
streamed their weights at ~11 GB/s from a cache that delivers 70. ``transpose_gemv_weights``
rewrites each into a conv whose weights are stored [O/T, C, T] at compile time (T = the tile), so a
tile reads one contiguous block, in order. The sum over C runs in the conv's own order, term by
term, so the outputs are bit-identical.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["GEMV_BLOCK", "gemv_tile", "transpose_gemv_weights"]

log = logging.getLogger(__name__)

GEMV_BLOCK = "conv2d_nchw_ihwo"  # the rewritten conv's block, which the tiled schedule tiles as a conv


def gemv_tile(out_channels: int, lanes: int) -> int:
    """Output channels of a GEMV's register tile: 4, 2 or 1 vectors of ``lanes``, the most that divide
    ``out_channels`` (a multiple of ``lanes``). The weights are laid out for it and the schedule cuts it."""
    return next(u * lanes for u in (4, 2, 1) if out_channels % (u * lanes) == 0)


def transpose_gemv_weights(mod, lanes: int):
    """``mod`` (an imported, not yet legalized Relax module) with each float conv on a 1x1 map whose
    output channels fill whole vectors of ``lanes`` (others are left) reading its weights as [O/T, C, T],
    T its ``gemv_tile``."""
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import rewrite_convs

    def rewrite(builder, call, lookup_binding):
        weight = _gemv_weight(call, lookup_binding, lanes)
        if weight is None:
            return None
        out_channels, channels = weight.shape[:2]
        tile = gemv_tile(out_channels, lanes)
        blocked = np.ascontiguousarray(weight.reshape(out_channels // tile, tile, channels).transpose(0, 2, 1))
        return "gemv", builder.call_te(_conv_blocked, call.args[0], relax.const(blocked),
                                       primfunc_name_hint="conv2d_gemv")

    mod, counts = rewrite_convs(mod, rewrite)
    log.info("matrix-vector convs: %d read their weights transposed", counts["gemv"])
    return mod


def _gemv_weight(call, lookup_binding, lanes):
    """The constant float32 weights [O, C, 1, 1] of ``call`` if it is a plain NCHW conv of a [N, C, 1, 1]
    float32 tensor (one group, no padding or dilation) with O a multiple of ``lanes``, else None."""
    from tvm import ir, tirx

    attrs = call.attrs
    if (int(attrs.groups) != 1 or any(int(p) for p in attrs.padding) or [int(d) for d in attrs.dilation] != [1, 1]
            or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"
            or str(attrs.out_dtype) not in ("None", "", "float32", "void")):
        return None
    data, weight = call.args
    if isinstance(weight, ir.expr.Var):
        weight = lookup_binding(weight)
    if not isinstance(weight, ir.expr.Constant) or weight.value.dtype != "float32":
        return None
    ty = data.ty
    if getattr(ty, "dtype", None) != "float32" or getattr(ty, "ndim", 0) != 4 or ty.shape is None:
        return None
    shape = list(ty.shape)
    if not all(isinstance(d, tirx.IntImm) for d in shape) or [int(d) for d in shape[2:]] != [1, 1]:
        return None
    w = weight.value.numpy()
    if w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[1] != int(shape[1]) or w.shape[0] % lanes:
        return None
    return w


def _conv_blocked(data, weight):
    """TE: data [N, C, 1, 1] float32, weight [O/T, C, T] -> [N, O, 1, 1]: TOPI's conv2d_nchw sum (same
    operands, same product, same order over c), reading the weights tile by tile."""
    from tvm import te

    n, channels = data.shape[0], data.shape[1]
    tile = weight.shape[2]
    out_channels = weight.shape[0] * tile
    rc = te.reduce_axis((0, channels), "rc")
    ry, rx = te.reduce_axis((0, 1), "ry"), te.reduce_axis((0, 1), "rx")
    return te.compute(
        (n, out_channels, 1, 1),
        lambda i, f, y, x: te.sum(data[i, rc, y + ry, x + rx] * weight[f // tile, rc + ry + rx, f % tile],
                                  axis=[rc, ry, rx]),
        name=GEMV_BLOCK,
    )
