"""Clip bounds as immediates: ``max(x, lo)`` / ``min(x, hi)`` with ``lo``, ``hi`` in the instruction.

TVM's ONNX frontend imports a ``Clip`` as two PrimFuncs, ``maximum(x, lo)`` and ``minimum(x, hi)``,
whose bounds are 0-d tensors computed from the initializers at run time (``where(isnan(c), inf, c)``).
In a fused conv epilogue they stay buffer loads, and LLVM lowers a max against a loaded value as a
compare and a select (two vector instructions, ``fcmgt`` + ``bif`` on NEON), where a max against a
constant is one (``fmaxnm``). The epilogue of an integer conv runs both bounds of up to two clips per
output (hard-swish and the next layer's quantizer).

``clip_bounds_as_immediates(mod)`` folds the bounds to constants and rewrites each such call into a TE
compute with the bound as a float32 immediate. Max and min are exact, so the outputs are the same
bits (for NaN-free activations, which a clipped network has).
"""

from __future__ import annotations

import logging
import re

__all__ = ["clip_bound", "clip_bounds_as_immediates", "clip_operands"]

log = logging.getLogger(__name__)

_BOUNDS = {"maximum": "max", "minimum": "min"}  # the frontend's PrimFunc names -> the TE op


def clip_bounds_as_immediates(mod):
    """``mod`` (imported, not yet legalized) with every ``maximum``/``minimum`` PrimFunc call on a
    float32 tensor and a constant scalar bound computed with the bound as an immediate."""
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import ELEMWISE, rewrite_calls

    mod = relax.transform.FoldConstant()(mod)

    def rewrite(builder, call, lookup_binding):
        made = clip_bound(call)
        if made is None:
            return None
        kind, data, bound = made
        return kind, builder.call_te(_te_bound, data, kind, bound, primfunc_name_hint=f"{kind}_imm")

    mod, counts = rewrite_calls(mod, rewrite, ("relax.call_tir",), ELEMWISE)
    log.info("clip bounds as immediates: %d maximum, %d minimum", counts["maximum"], counts["minimum"])
    return mod  # rewrite_calls dropped the folded bounds' dead bindings


def clip_operands(call):
    """(kind, tensor, bound expression) if ``call`` is ``call_tir(maximum|minimum, (tensor, bound))``, the
    frontend's PrimFuncs of a clip (whatever the bound is: a constant once folded, else a var)."""
    from tvm import ir

    if len(call.args) < 2 or not isinstance(call.args[0], ir.GlobalVar):
        return None
    callee, args = call.args[0], call.args[1]
    kind = re.sub(r"\d+$", "", callee.name_hint)  # one PrimFunc per shape: maximum, maximum1, ...
    if kind not in _BOUNDS or not isinstance(args, ir.expr.Tuple) or len(args.fields) != 2:
        return None
    return kind, *args.fields


def clip_bound(call):
    """(kind, tensor, bound) if ``call`` is ``call_tir(maximum|minimum, (float32 tensor, 0-d constant))``."""
    from tvm import ir

    operands = clip_operands(call)
    if operands is None:
        return None
    kind, data, bound = operands
    if not isinstance(bound, ir.expr.Constant) or bound.value.dtype != "float32" or bound.value.numpy().ndim != 0:
        return None
    if getattr(data.ty, "dtype", None) != "float32":
        return None
    return kind, data, float(bound.value.numpy())


def _te_bound(x, kind: str, bound: float):
    from tvm import te, tirx

    op = te.max if _BOUNDS[kind] == "max" else te.min
    value = tirx.const(bound, "float32")
    return te.compute(x.shape, lambda *i: op(x[i], value), name=f"T_{kind}")
