"""Divisions by a constant as a multiply and two fused multiply-adds, with the same bits.

Every quantize divides by its scale (``round(x / s) + Z``), and hard-swish / hard-sigmoid divide by 6.
A vector ``fdiv`` is the slowest arithmetic a CPU has (Cortex-A72/A76 and this host's llvm-mca
models: ~34 cycles for 4 lanes where ``fmul`` takes 1), and an integer 1x1 conv's epilogue runs one
per 4 outputs, more than its dot products cost when the conv has few input channels. With
``r = RN(1 / s)`` (the correctly rounded reciprocal, computed here in float32)::

    q = RN(x * r);   e = fma(-q, s, x)   (exact: the residual of q);   x / s = fma(e, r, q)

is the correctly rounded quotient (Markstein's theorem, IEEE-754 round to nearest), so the outputs
stay bit-identical to onnxruntime's division. ``tests/test_exact_division.py`` checks it on this
host's FMA for every float32 of magnitude 2^-8 to 2^12 and 8 M random ones against 8 divisors (a C
loop checked 2^-20 to 2^24, 5.9 G quotients, with no difference). Zeros keep their value
(-0 / s gives +0, which every later op treats alike); infinite or NaN activations, which no quantized
network produces, are not covered.

``divide_by_reciprocal(mod)`` rewrites, in an imported Relax module before legalization, each
``quantize`` with a scalar constant scale and each ``divide`` of a float32 tensor by a scalar
constant into TE computes of that form (``llvm.fma``: CPU targets only).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["divide_by_reciprocal", "exact_quotient"]

log = logging.getLogger(__name__)



def exact_quotient(x, divisor: float):
    """TE/TIR: ``x / divisor`` for a float32 ``x``, correctly rounded, without a division."""
    from tvm import tirx

    divisor = np.float32(divisor)
    reciprocal = np.float32(1) / divisor  # IEEE float32 division: correctly rounded

    def fma(a, b, c):
        return tirx.call_llvm_pure_intrin("float32", "llvm.fma", a, b, c)

    s, r = tirx.const(float(divisor), "float32"), tirx.const(float(reciprocal), "float32")
    q = x * r
    return fma(fma(-q, s, x), r, q)


def divide_by_reciprocal(mod):
    """``mod`` with each quantize by a constant scalar scale and each float32 divide by a constant
    scalar computed by ``exact_quotient``."""
    from tvm import ir

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import ELEMWISE, rewrite_calls

    quantize, divide = ir.Op.get("relax.quantize"), ir.Op.get("relax.divide")

    def rewrite(builder, call, lookup_binding):
        if call.op == quantize:
            return _quantize(builder, call)
        if call.op == divide:
            return _divide(builder, call)
        return None

    mod, counts = rewrite_calls(mod, rewrite, ("relax.quantize", "relax.divide"), ELEMWISE)
    log.info("exact reciprocal division: %d quantizes, %d divides", counts["quantize"], counts["divide"])
    return mod


def _scalar(expr, dtype: str):
    """The value of a constant scalar (any shape of one element) of ``dtype``, else None."""
    from tvm import ir

    if not isinstance(expr, ir.expr.Constant) or expr.value.dtype != dtype:
        return None
    value = expr.value.numpy()
    return value.reshape(-1)[0] if value.size == 1 else None


def _usable_divisor(value) -> bool:
    return value is not None and np.isfinite(value) and value != 0 and np.isfinite(np.float32(1) / value)


def _quantize(builder, call):
    from tvm import te, tirx

    data, scale, zero_point = call.args
    out_dtype = str(call.attrs.out_dtype)
    s = _scalar(scale, "float32")
    z = next((v for v in (_scalar(zero_point, d) for d in ("uint8", "int8", "int32")) if v is not None), None)
    if data.ty.dtype != "float32" or not _usable_divisor(s) or z is None or out_dtype not in ("uint8", "int8"):
        return None
    low, high = (0, 255) if out_dtype == "uint8" else (-128, 127)

    def compute(x):
        def one(*i):
            value = te.round(exact_quotient(x[i], s)) + tirx.const(float(z), "float32")
            return te.max(te.min(value, tirx.const(high, "float32")), tirx.const(low, "float32")).astype(out_dtype)

        return te.compute(x.shape, one, name="quantized")

    return "quantize", builder.call_te(compute, data, primfunc_name_hint="quantize")


def _divide(builder, call):
    from tvm import te

    data, divisor = call.args
    d = _scalar(divisor, "float32")
    if data.ty.dtype != "float32" or not _usable_divisor(d) or data.ty.ndim < 1:
        return None
    return "divide", builder.call_te(
        lambda x: te.compute(x.shape, lambda *i: exact_quotient(x[i], d), name="T_divide"), data,
        primfunc_name_hint="divide",
    )
