"""Division by a constant as multiply + two FMAs (targets.cpu.exact_division) gives the same bits as x / s."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

# a hard-swish's 6, mantissas of all ones and of one ulp above 1, and typical activation scales
DIVISORS = np.array([6.0, 1.9999999, 0.99999994, 0.01, 0.0039215689, 0.05, 1.0000001, 0.16666667], np.float32)


def _quotient_kernel(divisor):
    from tvm import te

    from qfa_deploy.deploy.targets.cpu.exact_division import exact_quotient

    x = te.placeholder((1 << 23,), "float32", name="x")
    y = te.compute(x.shape, lambda i: exact_quotient(x[i], divisor), name="y")
    return tvm.compile(te.create_prim_func([x, y]), target="llvm")


def _binade(exponent: int, negative: bool) -> np.ndarray:
    """Every float32 of [2^exponent, 2^(exponent+1)) (or its negation)."""
    bits = ((exponent + 127) << 23) + np.arange(1 << 23, dtype=np.uint32)
    values = bits.astype(np.uint32).view(np.float32)
    return -values if negative else values


@pytest.mark.parametrize("divisor", DIVISORS[:4].tolist())
def test_every_float_of_the_activation_range_divides_exactly(divisor):
    kernel = _quotient_kernel(divisor)
    out = tvm.runtime.empty((1 << 23,), "float32", tvm.cpu())
    for exponent in range(-8, 12):  # 2^-8 .. 2^12: the values a quantize or hard-swish meets (codes <= 255)
        for negative in (False, True):
            x = _binade(exponent, negative)
            kernel(tvm.runtime.tensor(x), out)
            expected = x / np.float32(divisor)
            mismatch = np.flatnonzero(out.numpy().view(np.uint32) != expected.view(np.uint32))
            assert mismatch.size == 0, (divisor, x[mismatch[:3]], out.numpy()[mismatch[:3]], expected[mismatch[:3]])


def test_random_floats_over_the_whole_range_and_zero():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, 1 << 23, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).copy()
    x[~np.isfinite(x) | (np.abs(x) > 1e30) | (np.abs(x) < 1e-30)] = 0.0  # no overflow, underflow, inf, NaN
    for divisor in DIVISORS:
        out = tvm.runtime.empty(x.shape, "float32", tvm.cpu())
        _quotient_kernel(divisor)(tvm.runtime.tensor(x), out)
        np.testing.assert_array_equal(out.numpy(), x / divisor)  # +0 and -0 compare equal: documented


def _relax_module(scale: float, zero_point: int):
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            hard = builder.emit(relax.op.divide(x, relax.const(6.0, "float32")))
            codes = builder.emit(relax.op.quantize(hard, relax.const(scale, "float32"),
                                                   relax.const(zero_point, "uint8"), axis=1, out_dtype="uint8"))
            out = builder.emit_output(relax.Tuple([hard, codes]))
        builder.emit_func_output(out)
    return builder.get()


def _run(mod, x):
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    hard, codes = vm["main"](tvm.runtime.tensor(x))
    return hard.numpy(), codes.numpy()


def test_the_relax_rewrite_keeps_quantize_and_divide_outputs():
    from qfa_deploy.deploy.targets.cpu.exact_division import divide_by_reciprocal

    scale, zero_point = 0.0173, 37
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 8, 16)) * 4).astype(np.float32)
    x.reshape(-1)[:64] = (np.arange(64) - 32 + 0.5) * 6 * scale  # quotients on the rounding ties
    mod = _relax_module(scale, zero_point)
    rewritten = divide_by_reciprocal(mod)
    assert "relax.divide" not in rewritten.script() and "relax.quantize" not in rewritten.script()
    for got, expected in zip(_run(rewritten, x), _run(mod, x), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_zero_or_tensor_scale_is_left_alone():
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.exact_division import divide_by_reciprocal

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            a = builder.emit(relax.op.divide(x, relax.const(0.0, "float32")))
            b = builder.emit(relax.op.divide(a, relax.const(np.array([1.0, 2.0, 3.0], np.float32))))
            out = builder.emit_output(b)
        builder.emit_func_output(out)
    assert divide_by_reciprocal(builder.get()).script().count("R.divide") == 2
