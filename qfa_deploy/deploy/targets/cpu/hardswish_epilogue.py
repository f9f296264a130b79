"""An integer conv's hard-swish epilogue as three fused multiply-adds, wherever that is proven to give the same codes.

After an integer conv with a hard-swish (``targets.cpu.integer``: the conv's output ``y`` is an integer in
float32, |y| < 2^24) the exported graph computes, per output channel,

    x = RN(RN(y * m) + b);   h = RN(RN(x * clip(RN(x + 3), 0, 6)) / 6)
    code = sat(rint(clip(RN(h + shift), lo, hi) / s) + z)

about twenty vector instructions per vector of outputs, two of them exact divisions of three each
(``exact_division``): on an integer 1x1 conv with ~100 input channels the epilogue costs as much as the
dot products. ``fold_hardswish_epilogues`` computes instead

    u = fma(y, m / s, b / s);   v = clamp(fma(y, m / 6, (b + 3) / 6), 0, 1)
    code = clamp(rint(fma(u, v, shift / s + z)), L, H)          (L, H: the codes of lo and hi)

nine instructions and a chain half as long, but only where it is proven equal to the graph on every
integer ``y`` in [-2^24, 2^24]. Hard-swish is not monotone, so the proof cuts the line in three
(``m >= 0``: x, u and the ramps grow with y):

- below, where both ramps are 0 (``RN(x + 3) <= 0`` and ``fma(y, m/6, (b+3)/6) <= 0``), both sides
  are one constant code each: compared once;
- above, where ``x >= 0`` and ``u >= 0``, both are products of non-negative non-decreasing factors,
  hence non-decreasing: equal everywhere iff equal on both sides of each of the graph's steps
  (``affine_epilogue.step_points``);
- between (x from about -3 to 0: ~3/m integers, a few hundred to a few thousand), every y is compared.

Each side is evaluated op by op in float32 as onnxruntime does (the FMAs exactly,
``affine_epilogue.fma_float32``). A conv with a channel where they differ, or whose middle stretch is
too long to enumerate (8-bit codes), keeps its float epilogue (logged).
``tests/test_hardswish_epilogue.py`` checks the compiled form against the graph on every ``y`` of a range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from qfa_deploy.deploy.targets.cpu.affine_epilogue import (
    Y_BOUND,
    bounds_argument,
    broadcast_units,
    constant_value,
    distinct_units,
    first_true,
    fma_float32,
    fold_quantize_epilogues,
    is_integer_conv,
    producer,
    quantize_operands,
    spread_units,
    step_points,
    unit_value,
)

__all__ = ["HardSwishCodes", "HardSwishEpilogue", "fold_hardswish_epilogues", "hardswish_codes"]

log = logging.getLogger(__name__)

F32 = np.float32
MAX_ENUMERATED = 1 << 22  # integers compared one by one per conv (the middle stretches of its distinct units)


@dataclass(frozen=True)
class HardSwishEpilogue:
    """The graph's per-unit hard-swish epilogue after an integer conv (arrays of its units)."""

    multiplier: np.ndarray
    bias: np.ndarray
    offset: float  # the 3 of x + 3
    ramp: tuple[float, float]  # the clip of x + 3: (0, 6)
    divisor: float  # the 6 of h / 6
    shift: np.ndarray
    clip: tuple[float, float]
    scale: float
    zero_point: np.ndarray
    code_range: tuple[int, int]

    def x(self, y: np.ndarray, unit) -> np.ndarray:
        return (y.astype(F32) * self.multiplier[unit]) + self.bias[unit]

    def ramp_input(self, y: np.ndarray, unit) -> np.ndarray:
        return self.x(y, unit) + F32(self.offset)

    def codes(self, y: np.ndarray, unit) -> np.ndarray:
        """The graph's codes of integer conv outputs ``y`` (float64 holding integers) of units ``unit``."""
        x = self.x(y, unit)
        r = np.minimum(np.maximum(x + F32(self.offset), F32(self.ramp[0])), F32(self.ramp[1]))
        h = (x * r) / F32(self.divisor)
        t = np.minimum(np.maximum(h + self.shift[unit], F32(self.clip[0])), F32(self.clip[1]))
        return np.clip(np.rint(t / F32(self.scale)) + self.zero_point[unit], *self.code_range)


@dataclass(frozen=True)
class HardSwishCodes:
    """``clamp(rint(fma(fma(y, a, b), clamp(fma(y, c, d), lo_ramp, hi_ramp), k)), low, high)`` per unit."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    ramp: tuple[float, float]
    k: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def u(self, y: np.ndarray, unit) -> np.ndarray:
        return fma_float32(y, self.a[unit], self.b[unit])

    def ramp_input(self, y: np.ndarray, unit) -> np.ndarray:
        return fma_float32(y, self.c[unit], self.d[unit])

    def codes(self, y: np.ndarray, unit) -> np.ndarray:
        v = np.minimum(np.maximum(self.ramp_input(y, unit), F32(self.ramp[0])), F32(self.ramp[1]))
        value = fma_float32(self.u(y, unit), v, self.k[unit])  # float32 x float32: exact in float64
        return np.clip(np.rint(value), self.low[unit], self.high[unit])


def hardswish_codes(epilogue: HardSwishEpilogue) -> tuple[HardSwishCodes, np.ndarray]:
    """(the FMA form of ``epilogue``, which units it is proven equal on). The constants are the nearest
    float32s; a unit where they differ tries its offsets a few ulps away (``_NUDGES``): any constants
    that pass the proof are as good."""
    form = _nearest_form(epilogue)
    proven = _proven(epilogue, form)
    for field, ulps in _NUDGES:
        todo = np.flatnonzero(~proven)
        if todo.size == 0:
            break
        values = getattr(form, field).copy()
        values[todo] = _ulps_away(values[todo], ulps)
        candidate = replace(form, **{field: values})
        fixed = todo[_proven(_units(epilogue, todo), _units(candidate, todo))]
        kept = getattr(form, field).copy()
        kept[fixed] = values[fixed]
        form = replace(form, **{field: kept})
        proven[fixed] = True
    return form, proven


# (offset field, ulps): the nudges a unit that the nearest constants fail on tries, in order
_NUDGES = (("k", 1), ("k", -1), ("b", 1), ("b", -1), ("d", 1), ("d", -1), ("k", 2), ("k", -2))


def _ulps_away(values: np.ndarray, ulps: int) -> np.ndarray:
    for _ in range(abs(ulps)):
        values = np.nextafter(values, F32(np.inf if ulps > 0 else -np.inf)).astype(F32)
    return values


def _units(value, index: np.ndarray):
    """``value`` (an epilogue or a form) restricted to the units ``index``."""
    return replace(value, **{name: getattr(value, name)[index] for name in value.__dataclass_fields__
                             if isinstance(getattr(value, name), np.ndarray)})


def _nearest_form(e: HardSwishEpilogue) -> HardSwishCodes:
    scale, divisor = np.float64(e.scale), np.float64(e.divisor)
    m, b = e.multiplier.astype(np.float64), e.bias.astype(np.float64)
    quantized = np.rint(np.array(e.clip, F32) / F32(e.scale))  # the codes of lo and hi, as the graph makes them
    low = np.clip(quantized[0] + e.zero_point, *e.code_range)
    high = np.clip(quantized[1] + e.zero_point, *e.code_range)
    return HardSwishCodes(
        (m / scale).astype(F32), (b / scale).astype(F32), (m / divisor).astype(F32),
        ((b + e.offset) / divisor).astype(F32), (e.ramp[0] / divisor, e.ramp[1] / divisor),
        (e.shift.astype(np.float64) / scale + e.zero_point).astype(F32), low, high,
    )


def _proven(e: HardSwishEpilogue, form: HardSwishCodes) -> np.ndarray:
    """Per unit: ``form`` gives the graph's codes on every integer y in [-2^24, 2^24] (the cut above);
    none is if the middle stretches hold more than ``MAX_ENUMERATED`` integers together."""
    m = e.multiplier
    units = m.size
    if units == 0:
        return np.zeros(0, bool)
    constants = np.stack([form.a, form.b, form.c, form.d, form.k]).astype(np.float64)
    provable = (e.multiplier >= 0) & np.all(np.isfinite(constants), axis=0)
    if not (e.ramp[0] == 0 < e.ramp[1] and e.divisor > 0):
        provable[:] = False  # the cut below assumes a ramp rising from 0
    # below: the last y where both ramps are 0; above: the first y where x >= 0 and u >= 0
    below = np.minimum(_first(lambda y, u: e.ramp_input(y, u) > 0, units),
                       _first(lambda y, u: form.ramp_input(y, u) > 0, units)) - 1
    above = np.maximum(_first(lambda y, u: e.x(y, u) >= 0, units), _first(lambda y, u: form.u(y, u) >= 0, units))
    constant = e.multiplier == 0  # y does not matter: one comparison, from the line's start ("above")
    below, above = np.where(constant, -Y_BOUND - 1, below), np.where(constant, -Y_BOUND, np.maximum(above, below + 1))
    ends = np.stack([np.full(units, -Y_BOUND, np.float64), np.full(units, Y_BOUND, np.float64)], axis=1)
    rows = np.arange(units)
    proven = provable & (e.codes(ends[:, :1], rows[:, None])[:, 0] == form.codes(ends[:, :1], rows[:, None])[:, 0])
    middle = np.clip(above - below - 1, 0, None)
    if middle.sum() > MAX_ENUMERATED:
        return np.zeros(units, bool)
    # between: every integer
    counts = middle.astype(np.int64)
    unit_of = np.repeat(rows, counts)
    start = np.repeat(below + 1 - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    y = (start + np.arange(counts.sum())).astype(np.float64)
    differs = e.codes(y, unit_of) != form.codes(y, unit_of)
    proven &= np.bincount(unit_of[differs], minlength=units) == 0
    # above: both non-decreasing from `above` to 2^24
    start_y = np.minimum(above, Y_BOUND).astype(np.float64)
    first_code = e.codes(start_y[:, None], rows[:, None])[:, 0]
    last_code = e.codes(ends[:, 1:], rows[:, None])[:, 0]
    steps = step_points(lambda y, u: e.codes(y, u), start_y, first_code, last_code)
    points = np.concatenate([steps - 1, steps, start_y[:, None], ends[:, 1:]], axis=1)
    points = np.clip(points, start_y[:, None], Y_BOUND)
    unit_grid = np.broadcast_to(rows[:, None], points.shape)
    return proven & np.all(e.codes(points, unit_grid) == form.codes(points, unit_grid), axis=1)


def _first(predicate, units: int) -> np.ndarray:
    """Per unit, the least integer y in [-2^24, 2^24] where the monotone ``predicate(y, unit)`` holds
    (2^24 + 1 where it never does)."""
    rows = np.arange(units)
    return first_true(lambda y: predicate(y, rows), np.full(units, -Y_BOUND - 1, np.float64))


def fold_hardswish_epilogues(mod):
    """``mod`` (imported, integer convs lowered, not yet legalized) with each quantize that ends an
    integer conv's hard-swish epilogue of the form above computed as ``HardSwishCodes``, where proven equal."""
    from tvm import relax

    def emit(builder, conv, form, out_dtype, unit_shape):
        def channel_values(v):
            return relax.const(v.reshape(unit_shape[0], -1)[:, 0].astype(F32))

        def unit_values(v):
            return relax.const(v.reshape(unit_shape).astype(F32))

        return builder.call_te(
            _hardswish_te, conv, channel_values(form.a), unit_values(form.b), channel_values(form.c),
            unit_values(form.d), form.ramp, unit_values(form.k), bounds_argument(form.low, unit_shape[:1]),
            bounds_argument(form.high, unit_shape[:1]), out_dtype, primfunc_name_hint="hardswish_codes")

    return fold_quantize_epilogues(mod, _match, _proven_form, emit,
                                   "hard-swish epilogues: %d integer convs quantize by three FMAs (%d refused)")


def _proven_form(epilogue: HardSwishEpilogue) -> tuple[HardSwishCodes, np.ndarray]:
    """``hardswish_codes`` over the distinct units of ``epilogue`` only, spread back to every unit."""
    distinct, inverse = distinct_units(epilogue)
    form, proven = hardswish_codes(distinct)
    spread = (v[inverse] for v in (form.a, form.b, form.c, form.d))
    return HardSwishCodes(*spread, form.ramp, form.k[inverse], form.low[inverse], form.high[inverse]), proven[inverse]


def _hardswish_te(y, a, b, c, d, ramp, k, low, high, out_dtype: str):
    """TE: the codes of ``HardSwishCodes``; a, c per channel [C]; b, d, k per channel or position."""
    from tvm import te, tirx

    def fma(p, q, r):
        return tirx.call_llvm_pure_intrin("float32", "llvm.fma", p, q, r)

    def one(n, ch, h, w):
        u = fma(y[n, ch, h, w], a[ch], unit_value(b, ch, h, w))
        v = te.min(te.max(fma(y[n, ch, h, w], c[ch], unit_value(d, ch, h, w)), tirx.const(ramp[0], "float32")),
                   tirx.const(ramp[1], "float32"))
        value = te.round(fma(u, v, unit_value(k, ch, h, w)))
        return te.max(te.min(value, unit_value(high, ch, h, w)), unit_value(low, ch, h, w)).astype(out_dtype)

    return te.compute(y.shape, one, name="hardswish_codes")


def _match(call, lookup_binding, uses: dict):
    """(integer conv output var, its HardSwishEpilogue, out dtype, its unit shape: [C] or [C, H, W]) if
    ``call`` (a quantize) ends ``multiply(m) -> add(b) = x -> hard-swish(x) -> [add(shift)] -> [maximum] ->
    [minimum]`` of an integer conv's output, all by constants, else None."""
    from tvm import ir

    quantize = quantize_operands(call, lookup_binding)
    if quantize is None:
        return None
    data, s, z, shape, out_dtype = quantize
    clip, x = _clip_before(data, lookup_binding, uses)
    kind, shift, h_div = producer(x, lookup_binding)
    if kind != "bias":  # a quantizer without a shift (adding 0 changes no code)
        shift, h_div = np.zeros((), F32), x
    elif uses.get(h_div, 0) != 1:
        return None
    divided = _binding(h_div, lookup_binding, "relax.divide")
    if divided is None or not isinstance(divided.args[0], ir.expr.Var) or uses.get(divided.args[0], 0) != 1:
        return None
    divisor = constant_value(divided.args[1], lookup_binding)
    product = _binding(divided.args[0], lookup_binding, "relax.multiply")
    if divisor is None or divisor.size != 1 or product is None:
        return None
    found = _ramp_of(product, lookup_binding, uses)
    if found is None:
        return None
    x_var, offset, ramp = found
    kind, bias, scaled = producer(x_var, lookup_binding)
    if kind != "bias" or uses.get(scaled, 0) != 1:
        return None
    kind, multiplier, conv = producer(scaled, lookup_binding)
    if kind != "multiplier" or uses.get(conv, 0) != 1 or not is_integer_conv(lookup_binding(conv)):
        return None
    units = broadcast_units({"multiplier": multiplier, "bias": bias, "shift": shift}, shape)
    if units is None or not np.all(units["multiplier"] == units["multiplier"][:, :1]):
        return None
    per_unit, unit_shape = spread_units(units, z, shape)
    low, high = clip.get("maximum", F32(-np.inf)), clip.get("minimum", F32(np.inf))
    epilogue = HardSwishEpilogue(
        per_unit["multiplier"], per_unit["bias"], offset, ramp, float(divisor.item()), per_unit["shift"],
        (float(low), float(high)), float(s.item()), per_unit["zero_point"],
        (0, 255) if out_dtype == "uint8" else (-128, 127),
    )
    return conv, epilogue, out_dtype, unit_shape


def _clip_before(x, lookup_binding, uses: dict) -> tuple[dict, object]:
    """({"maximum": bound, "minimum": bound}, the clipped var) for the clip (one of each at most, each
    read by the next only) that ends at ``x``; ({}, x) if none does."""
    clip = {}
    while True:
        kind, operand, inner = producer(x, lookup_binding)
        if kind not in ("maximum", "minimum") or kind in clip or uses.get(inner, 0) != 1:
            return clip, x
        clip[kind], x = operand, inner


def _ramp_of(product, lookup_binding, uses: dict):
    """(x, the offset 3, the ramp's clip (0, 6)) if ``product`` is ``multiply(x, clip(x + 3, 0, 6))``
    (x read by exactly those two), else None."""
    x_var, ramp_var = product.args
    clip, ramp_var = _clip_before(ramp_var, lookup_binding, uses)
    kind, offset, x_in = producer(ramp_var, lookup_binding)
    if (kind != "bias" or set(clip) != {"maximum", "minimum"} or offset.size != 1
            or not x_in.same_as(x_var) or uses.get(x_var, 0) != 2):
        return None
    return x_var, float(offset.item()), (float(clip["maximum"]), float(clip["minimum"]))


def _binding(var, lookup_binding, op_name: str):
    """The call bound to ``var`` if it is a call of ``op_name``, else None."""
    from tvm import ir

    if not isinstance(var, ir.expr.Var):
        return None
    value = lookup_binding(var)
    return value if isinstance(value, ir.expr.Call) and getattr(value.op, "name", None) == op_name else None
