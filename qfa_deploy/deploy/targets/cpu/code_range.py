"""The codes a quantize can produce: bounded by the clip in front of it, not only by uint8.

A b-bit activation is exported as ``Clip(x, lo, hi)`` then ``QuantizeLinear`` to uint8: its codes lie
in a range of 2^b values, far inside [0, 255]. A conv that proves its sums fit a narrow accumulator
(``integer``'s int16 depthwise sums) bounds ``|q - Z|`` with this range. TVM's ONNX frontend imports
the clip as ``maximum(x, lo)`` and ``minimum(x, hi)`` PrimFunc calls whose bounds are
``where(isnan(c), -+inf, c)`` of a constant; ``code_range`` follows the codes back through those and
applies the quantize to the bounds. Anything it does not recognise leaves the uint8 range.

The quantize divides by its scale (correctly rounded, ``exact_division``) and rounds to an integer:
both monotone, so the codes of ``x`` in [lo, hi] lie between the codes of lo and hi. Only the tie rule
of that rounding and a quotient an ulp away are left open, so the bounds round ties outwards with a
thousandth of a code of margin: exact wherever the bound's quotient is not within a thousandth of a
half (a b-bit clip's bounds sit on whole codes: its range is exactly 2^b codes).
"""

from __future__ import annotations

import numpy as np

__all__ = ["code_range"]

_FULL = (0, 255)
_TIE_MARGIN = 1e-3  # of a code: a quotient this close to a half may round either way


def code_range(codes, lookup_binding, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) code per channel [C] (int64) that ``codes`` (a uint8 [N, C, H, W] var of the
    imported module) can hold: from the clip before its quantize where there is one, else 0 and 255."""
    full = tuple(np.full(channels, v, np.int64) for v in _FULL)
    quantize = _bound_call(codes, lookup_binding)
    if quantize is None or getattr(quantize.op, "name", "") != "relax.quantize" or int(quantize.attrs.axis) != 1:
        return full
    scale, zero_point = (_scalar_value(arg, lookup_binding) for arg in quantize.args[1:3])
    if scale is None or zero_point is None or not np.all(scale > 0):
        return full
    lo, hi = _clip_bounds(quantize.args[0], lookup_binding)

    def code(value, default, to_code):
        if value is None:
            return np.full(channels, default, np.int64)
        quotient = (np.float32(value) / scale.astype(np.float32)).astype(np.float64)
        scaled = to_code(quotient).astype(np.int64) + zero_point.astype(np.int64)
        return np.broadcast_to(np.clip(scaled, *_FULL), (channels,)).astype(np.int64)

    lowest = code(lo, _FULL[0], lambda v: np.ceil(v - 0.5 - _TIE_MARGIN))  # ties (and near ties) down
    highest = code(hi, _FULL[1], lambda v: np.floor(v + 0.5 + _TIE_MARGIN))  # and up
    return lowest, highest


def _clip_bounds(expr, lookup_binding) -> tuple[float | None, float | None]:
    """(lo, hi) of the ``maximum``/``minimum`` calls producing ``expr`` (None where there is none)."""
    from qfa_deploy.deploy.targets.cpu.clip_immediates import clip_operands

    lo = hi = None
    call = _bound_call(expr, lookup_binding)
    while call is not None and (operands := clip_operands(call)) is not None:
        kind, data, bound = operands
        value = _scalar_value(bound, lookup_binding)
        if value is None or value.ndim != 0 or not np.isfinite(value):
            break
        if kind == "maximum":
            lo = float(value) if lo is None else max(lo, float(value))
        else:
            hi = float(value) if hi is None else min(hi, float(value))
        call = _bound_call(data, lookup_binding)
    return lo, hi


def _bound_call(expr, lookup_binding):
    """The call bound to ``expr`` (a var), else None."""
    from tvm import ir

    if isinstance(expr, ir.expr.Var):
        expr = lookup_binding(expr)
    return expr if isinstance(expr, ir.expr.Call) else None


def _scalar_value(expr, lookup_binding, depth: int = 4) -> np.ndarray | None:
    """The value of a constant expression made of constants, ``isnan`` and ``where`` (how the frontend
    writes a clip bound), else None."""
    from tvm import ir

    if isinstance(expr, ir.expr.Var) and depth > 0:
        bound = lookup_binding(expr)
        return None if bound is None else _scalar_value(bound, lookup_binding, depth - 1)
    if isinstance(expr, ir.expr.Constant):
        return expr.value.numpy()
    if not isinstance(expr, ir.expr.Call) or depth <= 0:
        return None
    args = [_scalar_value(arg, lookup_binding, depth - 1) for arg in expr.args]
    if any(arg is None for arg in args):
        return None
    name = getattr(expr.op, "name", "")
    if name == "relax.isnan" and len(args) == 1:
        return np.isnan(args[0])
    if name == "relax.where" and len(args) == 3:
        return np.where(*args)
    return None
