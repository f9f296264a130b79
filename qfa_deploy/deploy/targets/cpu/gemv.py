"""Squeeze-excite convs (float 1x1 convs on a 1x1 map) read their weights transposed.

Such a conv is a matrix-vector product: ``y[o] = sum_c x[c] * W[o, c]``. Its schedule puts a vector of
output channels in the lanes (``targets.cpu.tiled``), and with the weights in ONNX's
[O, C] layout each vector load gathered its lanes from as many rows: the squeeze-excite convs of a
w1.2 subnet at 224 took 12% of its time on one thread, reading 4.7 MB of float weights at ~9 GB/s.
``transpose_gemv_weights`` rewrites each into a conv whose weights are stored [C, 1, 1, O] at compile
time, so a vector of output channels is one contiguous load. The sum over C runs in the conv's own
order, term by term, so the outputs are bit-identical.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["GEMV_BLOCK", "transpose_gemv_weights"]

log = logging.getLogger(__name__)

GEMV_BLOCK = "conv2d_nchw_ihwo"  # the rewritten conv's block, which the tiled schedule tiles as a conv


def transpose_gemv_weights(mod, lanes: int):
    """``mod`` (an imported, not yet legalized Relax module) with each float conv on a 1x1 map whose
    output channels fill whole vectors of ``lanes`` (the schedule's tile; others are left) reading its
    weights as [C, 1, 1, O]."""
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import rewrite_convs

    def rewrite(builder, call, lookup_binding):
        weight = _gemv_weight(call, lookup_binding, lanes)
        if weight is None:
            return None
        transposed = np.ascontiguousarray(weight.transpose(1, 2, 3, 0))
        return "gemv", builder.call_te(_conv_ihwo, call.args[0], relax.const(transposed),
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


def _conv_ihwo(data, weight):
    """TE: data [N, C, 1, 1] float32, weight [C, 1, 1, O] -> [N, O, 1, 1]: TOPI's conv2d_nchw sum (same
    operands, same product, same order over c), reading the weights transposed."""
    from tvm import te

    n, channels = data.shape[0], data.shape[1]
    out_channels = weight.shape[3]
    rc = te.reduce_axis((0, channels), "rc")
    ry, rx = te.reduce_axis((0, 1), "ry"), te.reduce_axis((0, 1), "rx")
    return te.compute(
        (n, out_channels, 1, 1),
        lambda i, f, y, x: te.sum(data[i, rc, y + ry, x + rx] * weight[rc, ry, rx, f], axis=[rc, ry, rx]),
        name=GEMV_BLOCK,
    )
