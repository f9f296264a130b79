"""An integer conv's epilogue as one fused multiply-add, wherever that is proven to give the same codes.

An integer conv (``targets.cpu.integer``: 1x1 or depthwise) outputs an integer ``y`` held in float32
(|y| < 2^24). The exported graph maps it to the next layer's code per output channel through

    code = sat(rint(clip(act(RN(RN(y * m) + b)) + shift, lo, hi) / s) + z)      (act: ReLU or none)

about twelve vector instructions per vector of outputs, more than the dot products cost on a conv
with few input channels. Every step is monotone in ``y`` (for m >= 0), so per channel this is a
step function of ``y`` with at most 255 steps. ``fold_affine_epilogues`` replaces it by

    code = clamp(rint(fma(y, A, B)), L, H),   A = m / s,  B = (b + shift) / s + z  (rounded to float32)

(L, H: the codes at the ends of the range; ReLU and the clip become the clamp), but only where it
is proven equal on every ``y`` in [-2^24, 2^24]: both sides are monotone, so they are equal
everywhere iff they agree on both sides of each step of the graph's function. The steps are found by
bisection, the graph's function evaluated op by op in float32 (numpy rounds each op, as onnxruntime
does), the FMA exactly (TwoSum in float64, then one rounding to float32). A conv with a channel
where they differ keeps its float epilogue (logged). ``tests/test_affine_epilogue.py`` checks the
compiled FMA path against the graph on every ``y`` of a range, ties included.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "AffineCodes", "Y_BOUND", "affine_codes", "bounds_argument", "broadcast_units", "constant_value",
    "distinct_units", "feature_shape", "first_true", "fma_float32", "fold_affine_epilogues",
    "fold_quantize_epilogues", "is_integer_conv", "producer", "quantize_operands", "spread_units", "step_points",
    "unit_value",
]

log = logging.getLogger(__name__)

F32 = np.float32
Y_BOUND = 2 ** 24  # an integer conv's output magnitude bound (qfa_deploy.nn.integer_conv): float32-exact
# the integer convs' PrimFuncs (integer.py, arm/pairwise.py, arm/bitserial.py): their outputs are integers in float32
_INTEGER_CONV = re.compile(r"conv2d_(int8|pairwise|bitserial|codes)\d*$")


@dataclass(frozen=True)
class Epilogue:
    """The graph's per-channel epilogue after an integer conv (arrays of the conv's channels)."""

    multiplier: np.ndarray
    bias: np.ndarray
    relu: bool
    shift: np.ndarray
    clip: tuple[float, float]
    scale: float
    zero_point: np.ndarray
    code_range: tuple[int, int]  # the quantize's saturation: (0, 255) uint8, (-128, 127) int8

    def codes(self, y: np.ndarray, channel: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The graph's codes of integer conv outputs ``y`` [channels, k] (float64 holding integers)."""
        t = y.astype(F32) * self.multiplier[channel, None]
        t = t + self.bias[channel, None]
        if self.relu:
            t = np.maximum(t, F32(0))
        t = t + self.shift[channel, None]
        t = np.minimum(np.maximum(t, F32(self.clip[0])), F32(self.clip[1]))
        q = np.rint(t / F32(self.scale)) + self.zero_point[channel, None]
        return np.clip(q, *self.code_range)


@dataclass(frozen=True)
class AffineCodes:
    """``clamp(rint(fma(y, a, b)), low, high)`` per channel: float32 a, b; low, high integers."""

    a: np.ndarray
    b: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def codes(self, y: np.ndarray, channel: slice | np.ndarray = slice(None)) -> np.ndarray:
        value = fma_float32(y, self.a[channel, None], self.b[channel, None])
        return np.clip(np.rint(value), self.low[channel, None], self.high[channel, None])


def affine_codes(epilogue: Epilogue) -> tuple[AffineCodes, np.ndarray]:
    """(the FMA form of ``epilogue``, which channels it is proven equal on)."""
    channels = epilogue.multiplier.size
    ends = epilogue.codes(np.tile([[-Y_BOUND, Y_BOUND]], (channels, 1)).astype(np.float64))
    low, high = ends[:, 0], ends[:, 1]
    scale = np.float64(epilogue.scale)
    a = (epilogue.multiplier.astype(np.float64) / scale).astype(F32)
    b = ((epilogue.bias.astype(np.float64) + epilogue.shift) / scale + epilogue.zero_point).astype(F32)
    form = AffineCodes(a, b, low, high)
    # the proof needs both sides monotone non-decreasing: m >= 0 (then A >= 0 too)
    provable = (epilogue.multiplier >= 0) & np.isfinite(a) & np.isfinite(b)
    steps = step_points(lambda y, rows: epilogue.codes(y, rows.reshape(-1)), np.full(channels, -Y_BOUND, np.float64),
                        low, high)  # [channels, levels]: first y of each code above low
    points = np.concatenate([steps - 1, steps, np.tile([[-Y_BOUND, Y_BOUND]], (channels, 1))], axis=1)
    points = np.clip(points, -Y_BOUND, Y_BOUND)
    return form, provable & np.all(epilogue.codes(points) == form.codes(points), axis=1)


def step_points(codes, start: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """[units, levels]: for each code v in first+1 .. last, the least integer y in [start, 2^24] where the
    non-decreasing ``codes(y, units)`` reaches v (2^24 + 1 where none: clipped later; levels: the
    largest rise); bisection, vectorised over units and codes."""
    levels = max(int((last - first).max()), 1)
    targets = first[:, None] + np.arange(1, levels + 1)[None, :]
    rows = np.repeat(np.arange(targets.shape[0])[:, None], levels, axis=1)
    return first_true(lambda y: codes(y.reshape(-1, 1), rows.reshape(-1, 1)).reshape(y.shape) >= targets,
                      np.broadcast_to(start[:, None] - 1, targets.shape).astype(np.float64))


def first_true(holds, below: np.ndarray) -> np.ndarray:
    """Elementwise, the least integer y above ``below`` and up to 2^24 where ``holds(y)`` (monotone: false,
    then true) is true, 2^24 + 1 where it never is: bisection, vectorised over ``below``'s shape."""
    below = below.astype(np.float64)
    above = np.full(below.shape, Y_BOUND + 1, np.float64)  # holds (or above the range)
    while np.any(above - below > 1):
        mid = np.floor((below + above) / 2)
        reached = holds(mid)
        above, below = np.where(reached, mid, above), np.where(reached, below, mid)
    return above


def fma_float32(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """float32 fma(x, y, z), correctly rounded, for float32 y, z and x an integer below 2^25 or a float32
    (either way x*y is exact in float64); the sum exact as TwoSum's (high, low), rounded once to float32."""
    product = x.astype(np.float64) * y.astype(np.float64)
    addend = np.broadcast_to(z.astype(np.float64), product.shape)
    high = product + addend
    virtual = high - product
    low = (product - (high - virtual)) + (addend - virtual)
    rounded = high.astype(F32)
    # a double that lies exactly halfway between two float32s is where `low` decides the direction
    gap = high - rounded.astype(np.float64)
    other = np.nextafter(rounded, np.where(gap > 0, F32(np.inf), F32(-np.inf)).astype(F32))
    halfway = (gap != 0) & (2 * gap == other.astype(np.float64) - rounded.astype(np.float64))
    # elsewhere the double rounding cannot cross a midpoint: |low| is below half a double's ulp
    towards_other = halfway & (np.sign(low) == np.sign(gap))
    return np.where(towards_other, other, rounded)


def fold_affine_epilogues(mod):
    """``mod`` (imported, integer convs lowered, not yet legalized) with each quantize that ends an
    integer conv's epilogue of the form above computed as ``AffineCodes``, where proven equal."""
    from tvm import relax

    def emit(builder, conv, form, out_dtype, unit_shape):
        a = form.a.reshape(unit_shape[0], -1)[:, 0]  # the multiplier does not vary over positions
        return builder.call_te(_affine_te, conv, relax.const(a), relax.const(form.b.reshape(unit_shape)),
                               bounds_argument(form.low, unit_shape), bounds_argument(form.high, unit_shape),
                               out_dtype, primfunc_name_hint="affine_codes")

    return fold_quantize_epilogues(mod, _match, _proven_form, emit, "affine epilogues: %d integer convs quantize "
                                   "by one FMA (%d refused: a channel differs)")


def _proven_form(epilogue: Epilogue) -> tuple[AffineCodes, np.ndarray]:
    """``affine_codes`` over the distinct units of ``epilogue`` only, spread back to every unit."""
    distinct, inverse = distinct_units(epilogue)
    form, proven = affine_codes(distinct)
    return AffineCodes(*(v[inverse] for v in (form.a, form.b, form.low, form.high))), proven[inverse]


def fold_quantize_epilogues(mod, match, proven_form, emit, message: str):
    """``mod`` with each quantize that ``match(call, lookup_binding, uses)`` recognises as the end of an
    integer conv's epilogue -> (conv, epilogue, out dtype, unit shape) computed by ``emit(builder, conv,
    form, out dtype, unit shape)`` where ``proven_form(epilogue)`` -> (form, proven per unit) proves every
    unit; logs ``message`` % (folded, refused)."""
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import ELEMWISE, rewrite_calls, use_counts

    mod = relax.transform.FoldConstant()(mod)  # the clip bounds, computed from initializers at run time
    uses = use_counts(mod["main"])
    refused = []

    def rewrite(builder, call, lookup_binding):
        found = match(call, lookup_binding, uses)
        if found is None:
            return None
        conv, epilogue, out_dtype, unit_shape = found
        form, proven = proven_form(epilogue)
        if not proven.all():
            refused.append(call)
            log.debug("epilogue refused: %d of %d units differ", int((~proven).sum()), proven.size)
            return None
        return "folded", emit(builder, conv, form, out_dtype, unit_shape)

    mod, counts = rewrite_calls(mod, rewrite, ("relax.quantize",), ELEMWISE)
    log.info(message, counts["folded"], len(refused))
    return mod


def distinct_units(epilogue):
    """(``epilogue`` over its distinct units only, the index of each unit's distinct one): a border bias
    map has a few values per channel over thousands of positions, and a proof need see each once."""
    rows = np.stack([epilogue.multiplier, epilogue.bias, epilogue.shift, epilogue.zero_point], axis=1)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    return (replace(epilogue, multiplier=distinct[:, 0], bias=distinct[:, 1], shift=distinct[:, 2],
                    zero_point=distinct[:, 3]), inverse.reshape(-1))


def bounds_argument(values: np.ndarray, unit_shape: tuple[int, ...]):
    """One immediate if every unit has the same bound, else the constant of ``unit_shape``."""
    from tvm import relax

    return float(values[0]) if np.all(values == values[0]) else relax.const(values.reshape(unit_shape).astype(F32))


def unit_value(value, c, h, w):
    """TE: a constant at output (c, h, w): an immediate, per channel [C] or per position [C, H, W]."""
    from tvm import tirx

    if isinstance(value, float):
        return tirx.const(value, "float32")
    return value[c] if len(value.shape) == 1 else value[c, h, w]


def _affine_te(y, a, b, low, high, out_dtype: str):
    """TE: codes = clamp(rint(fma(y, a[c], b)), low, high); b, low, high per channel [C] or position [C, H, W]."""
    from tvm import te, tirx

    def one(n, c, h, w):
        value = tirx.call_llvm_pure_intrin("float32", "llvm.fma", y[n, c, h, w], a[c], unit_value(b, c, h, w))
        clamped = te.max(te.min(te.round(value), unit_value(high, c, h, w)), unit_value(low, c, h, w))
        return clamped.astype(out_dtype)

    return te.compute(y.shape, one, name="affine_codes")


def _match(call, lookup_binding, uses: dict):
    """(integer conv output var, its Epilogue, out dtype, the shape of its units: [C] or [C, H, W] where a
    constant varies over positions) if ``call`` (a quantize) ends
    ``multiply -> add -> [relu] -> [add] -> [maximum] -> [minimum]`` of an integer conv's output, all
    by constants, every step read by the next only (else the conv's epilogue is needed anyway), else None."""
    quantize = quantize_operands(call, lookup_binding)
    if quantize is None:
        return None
    data, s, z, shape, out_dtype = quantize
    steps, x = [], data  # (kind, constant operand's value), walking from the quantize back to the conv
    while len(steps) < 6 and not (steps and steps[-1][0] == "multiplier"):
        kind, operand, x_in = producer(x, lookup_binding)
        if kind is None or uses.get(x_in, 0) != 1:
            return None
        steps.append((kind, operand))
        x = x_in
    clip = {kind: operand for kind, operand in steps if kind in ("maximum", "minimum")}
    kinds = [kind for kind, _ in steps[len(clip):]]
    names = _CHAINS.get(tuple(kinds))
    if names is None or not is_integer_conv(lookup_binding(x)):
        return None
    operands = dict(zip(names, (operand for _, operand in steps[len(clip):]), strict=True))
    # every constant as [C, H*W] (ONNX broadcasting); the bias may vary over positions (a depthwise
    # conv's border correction), the multiplier may not (A is one value per channel)
    units = broadcast_units({name: v for name, v in {**operands, **clip}.items() if name != "relu"}, shape)
    if units is None:
        return None
    low, high = units.get("maximum", np.array([[-np.inf]])), units.get("minimum", np.array([[np.inf]]))
    if not (np.all(low == low.flat[0]) and np.all(high == high.flat[0])):
        return None
    if not np.all(units["multiplier"] == units["multiplier"][:, :1]):
        return None
    units.setdefault("shift", np.zeros_like(units["multiplier"]))
    per_unit, unit_shape = spread_units(units, z, shape)
    epilogue = Epilogue(
        per_unit["multiplier"], per_unit["bias"], "relu" in operands, per_unit["shift"],
        (float(low.flat[0]), float(high.flat[0])), float(s.item()), per_unit["zero_point"],
        (0, 255) if out_dtype == "uint8" else (-128, 127),
    )
    return x, epilogue, out_dtype, unit_shape


def quantize_operands(call, lookup_binding):
    """(its float input, scale, zero points, the input's (C, H, W), out dtype) of ``call`` (a quantize) by a
    positive constant scale into uint8/int8 with one or C constant zero points, else None."""
    data, scale, zero_point = call.args
    out_dtype = str(call.attrs.out_dtype)
    s, z = constant_value(scale, lookup_binding), constant_value(zero_point, lookup_binding)
    shape = feature_shape(data)
    if (out_dtype not in ("uint8", "int8") or s is None or s.size != 1 or not s.item() > 0 or z is None
            or shape is None or z.size not in (1, shape[0])):
        return None
    return data, s, z, shape, out_dtype


def spread_units(units: dict, zero_point: np.ndarray, shape: tuple[int, int, int]) -> tuple[dict, tuple]:
    """(each [C, H*W] constant of ``units`` and the zero points, per unit; the units' shape): one unit per
    channel [C] where no constant varies over positions, else one per position [C, H, W]."""
    varying = any(not np.all(v == v[:, :1]) for v in units.values())
    zero = np.broadcast_to(zero_point.astype(F32).reshape(-1, 1), (shape[0], shape[1] * shape[2]))
    spread = {name: np.ascontiguousarray(v).reshape(-1) if varying else np.ascontiguousarray(v[:, 0])
              for name, v in {**units, "zero_point": zero}.items()}
    return spread, (shape if varying else shape[:1])


# the kinds met walking back from the clip to the conv -> what each add is
_CHAINS = {
    ("bias", "multiplier"): ("bias", "multiplier"),
    ("bias", "bias", "multiplier"): ("shift", "bias", "multiplier"),
    ("relu", "bias", "multiplier"): ("relu", "bias", "multiplier"),
    ("bias", "relu", "bias", "multiplier"): ("shift", "relu", "bias", "multiplier"),
}


_ELEMENTWISE_OPS = {"relax.multiply": "multiplier", "relax.add": "bias", "relax.nn.relu": "relu"}


def producer(x, lookup_binding):
    """(kind, constant operand's value, the other input) of the binding of ``x``: kind "multiplier"
    (multiply), "bias" (add), "relu", "maximum" / "minimum" (the clip's PrimFuncs); else (None, None, None)."""
    from tvm import ir

    from qfa_deploy.deploy.targets.cpu.clip_immediates import clip_bound

    if not isinstance(x, ir.expr.Var):
        return None, None, None
    value = lookup_binding(x)
    if not isinstance(value, ir.expr.Call):
        return None, None, None
    name = getattr(value.op, "name", None)
    if name == "relax.call_tir":
        clip = clip_bound(value)
        return (None, None, None) if clip is None else (clip[0], np.float32(clip[2]), clip[1])
    kind = _ELEMENTWISE_OPS.get(name)
    if kind == "relu":
        return kind, None, value.args[0]
    if kind is not None:
        first, second = value.args
        for constant, other in ((second, first), (first, second)):
            found = constant_value(constant, lookup_binding)
            if found is not None:
                return kind, found, other
    return None, None, None


def is_integer_conv(value) -> bool:
    from tvm import ir

    return (isinstance(value, ir.expr.Call) and getattr(value.op, "name", None) == "relax.call_tir"
            and bool(_INTEGER_CONV.match(getattr(value.args[0], "name_hint", ""))))


def feature_shape(data) -> tuple[int, int, int] | None:
    """(C, H, W) of a static float32 NCHW tensor of batch 1, else None."""
    from tvm import tirx

    ty = data.ty
    if getattr(ty, "dtype", None) != "float32" or getattr(ty, "ndim", 0) != 4 or ty.shape is None:
        return None
    dims = list(ty.shape)
    if not all(isinstance(d, tirx.IntImm) for d in dims) or int(dims[0]) != 1:
        return None
    return tuple(int(d) for d in dims[1:])


def constant_value(expr, lookup_binding) -> np.ndarray | None:
    from tvm import ir

    if isinstance(expr, ir.expr.Var):
        expr = lookup_binding(expr)
    return expr.value.numpy() if isinstance(expr, ir.expr.Constant) else None


def broadcast_units(operands: dict, shape: tuple[int, int, int]) -> dict | None:
    """Each float32 constant of ``operands`` as [C, H*W] (``broadcast``), None if one is not such a constant."""
    units = {name: broadcast(value, shape) for name, value in operands.items()}
    return None if any(v is None for v in units.values()) else units


def broadcast(value: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A float32 constant broadcast (as ONNX does) onto [1, C, H, W], as [C, H*W]; None if it is not one."""
    if value.dtype != np.float32:
        return None
    channels, height, width = shape
    try:
        full = np.broadcast_to(value, (1, channels, height, width))
    except ValueError:
        return None
    return full[0].reshape(channels, height * width)
