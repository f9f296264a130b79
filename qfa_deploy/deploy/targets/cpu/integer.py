"""Integer convs read the uint8 codes: 1x1 convs as integer dot products, depthwise convs channel-blocked.

The exported graph computes every quantized conv as ``Conv(q - Z, w_int)`` on float tensors holding
integers, whose every partial sum is an integer below 2^24 (``qfa_deploy.nn.integer_conv``), so the
float conv is exact. For a 1x1 conv the same sum can be taken on the integers themselves:

    acc[o] = sum_c (q[c] - s) * w[o, c] - comp[o],    comp[o] = sum_c (Z[c] - s) * w[o, c]

with ``q`` the uint8 codes, ``w`` int8, int32 accumulation, and ``s`` a shift of the codes (0, or 128
where the target's instruction multiplies signed bytes only: ``q - 128`` is an int8, and the
compensation takes the shift back exactly). The result is converted to float and the graph goes on
unchanged, so the outputs are bit-identical to the float build. How a target computes it is an
:class:`IntegerPlan`: x86 tensorizes the dot product on ``vpdpbusd`` (``targets.x86``), the
Pi 5 on ``sdot``, the Pi 4 brings its own lowering (``targets.arm.pairwise``: ``smull`` +
``sadalp``) and keeps LLVM's NEON widening multiply-accumulates for the convs it leaves.

``lower_integer_convs(mod, plan)`` rewrites, in the imported Relax module, each
``conv2d(dequantize(q, 1, Z), dequantize(W, 1, 0))``:

- 1x1, stride 1, one group: one ``call_tir`` of three stages: pack the codes to
  ``[C/g, H, W, g]`` (``g`` = ``plan.group`` channels of a pixel side by side, the operand of one
  dot instruction), the packed dot product into int32 tiles of ``lanes`` output channels (weights
  pre-packed at compile time to ``[O/lanes, C/g, lanes, g]``), and the conversion back to an NCHW
  float tensor, onto which the conv's epilogue then fuses.
- k x k, one group, few taps (the stem: 3 x 3 x 3): its patches as the channels of a 1x1 conv as above.
- depthwise (channels a multiple of the smallest block): the same float sums, but dequantizing the
  codes in its own padding stage, so that the tensor between the producer and the conv is uint8
  instead of float (a quarter of the bytes), into planes of ``lanes`` channels side by side: every
  tap is then one contiguous vector load and FMA whatever the stride or the width. Where the plan
  allows it and ``depthwise_int16_sums`` proves every sum fits, the planes hold ``q - Z`` as int16
  (or int8) and the sums are int16: half (a quarter) of the bytes per tap, the same integers.

With every reader of a dequantized tensor rewritten, the dequantize is dead and the producing
function ends at its quantize. ``targets.cpu.integer_schedule`` schedules both;
``targets.cpu.blocked_codes`` hands the codes from one integer conv to the next channel-blocked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qfa_deploy.deploy.registry import VectorUnit

__all__ = [
    "BITSERIAL_BLOCKS", "DEPTHWISE_BLOCKS", "INT8_BLOCKS", "IntegerPlan", "code_deviation", "depthwise_int16_sums",
    "integer_rewrite", "lower_integer_convs", "pack_codes", "pack_depthwise_weight", "pack_weight",
]

log = logging.getLogger(__name__)

# a k x k conv of one group with at most this many taps per output (C*k*k: the stem's 3 x 3 x 3 = 27) runs as a
# 1x1 integer conv of its patches (``_as_patches``), where the float conv gathered its strided inputs lane by lane
MAX_PATCH_TAPS = 64

INT8_BLOCKS = ("int8_pack", "int8_dot", "int8_out")  # the stages' block names, found again by the schedule
DEPTHWISE_BLOCKS = ("dw_pad", "dw_conv", "dw_out")
# a target's bit-serial 1x1 conv (``targets.arm.bitserial``): its codes reader and its tiled writer first
BITSERIAL_BLOCKS = ("bitserial_planes", "bitserial_dot", "bitserial_pairs", "bitserial_widen", "bitserial_total")


@dataclass(frozen=True)
class IntegerPlan:
    """How one target computes the integer convs."""

    name: str  # the schedule's name (logs)
    unit: VectorUnit  # the registers the tiles are cut for
    pointwise_lanes: tuple[int, ...]  # output channels of a 1x1 tile (int32 sums), preferred first
    depthwise_lanes: tuple[int, ...]  # channels of a depthwise block (float32 lanes), preferred first
    group: int = 4  # codes summed into each int32 lane by one instruction (the packing's inner axis)
    # subtracted from codes of 8 bits (``offset_for``): 128 where the instruction takes signed bytes only
    code_offset: int = 0
    # (int32 lanes, the codes' dtype) -> a registered tensor intrinsic; None: LLVM vectorizes
    dot: Callable[[int, str], str] | None = None
    dot_lanes: int = 0  # the most int32 lanes one dot instruction fills (wider tiles are split to it)
    # (int32 lanes, the codes' dtype) -> an intrinsic taking two words of a pixel's codes in one load, each a
    # lane of it (``dot_intrinsic.register_lane_dot_intrinsic``), where the codes allow; None: ``dot`` only
    lane_dot: Callable[[int, str], str] | None = None
    # how the depthwise weights (integers on the b-bit grid) are stored: "int8", converted to float32 where
    # the conv reads them (exact), or "float32" (the float weights themselves: no conversion per tap)
    depthwise_weight: str = "float32"
    # int16 lanes of a depthwise block whose every sum is proven to fit an int16 (``depthwise_int16_sums``):
    # taps as int16 multiply-accumulates, twice the channels of a float32 block per load and instruction
    # (NEON: 8 lanes, one q register); () keeps float32 sums
    depthwise_int16_lanes: tuple[int, ...] = ()
    # with int16 sums, the planes and weights as int8 where every |q - Z| fits one (NEON: int8 x int8
    # products added into int16 lanes, ``smlal``, at the multiply pipe's full rate; 8 bytes a tap)
    depthwise_int8_planes: bool = False
    # a target's own 1x1 lowering, tried first: (builder, codes, weight [O, C], zero points, bits of the
    # highest code) -> call or None
    pointwise_lowering: Callable | None = None
    pointwise_schedule: Callable | None = None  # (schedule, root's blocks) -> bool: schedules what it lowered

    def offset_for(self, code_bits: int) -> int:
        """The offset taken from codes of at most ``code_bits`` bits: none below 8 bits, where every code is
        already a non-negative signed byte (the conv then reads them in place, without a shifting pass)."""
        return self.code_offset if code_bits > 7 else 0

    def tile_lanes(self, channels: int) -> int:
        """Output channels per 1x1 tile: the first choice dividing ``channels`` (else the first, padded)."""
        return next((lanes for lanes in self.pointwise_lanes if channels % lanes == 0), self.pointwise_lanes[0])

    def depthwise_block(self, channels: int) -> int | None:
        """Channels per depthwise block: the first choice dividing ``channels``; None: left to the float path."""
        return next((lanes for lanes in self.depthwise_lanes if channels % lanes == 0), None)

    def tile_columns(self, lanes: int, share: int = 1, element_bits: int = 32, held: int = 0) -> int:
        """Pixels of a row per tile: as many accumulators as the register file allows (``share``: the
        tiles keep as many other registers live per accumulator, e.g. a depthwise tap's input; ``held``:
        registers the tile keeps live whatever its width, e.g. weights, beyond the unit's spare ones)."""
        budget = min(self.unit.accumulators, self.unit.registers - held)
        return max(1, budget // share // self.unit.registers_for(lanes, element_bits))


def lower_integer_convs(mod, plan: IntegerPlan):
    """``mod`` (an imported, not yet legalized Relax module) with its integer convs reading the codes:
    1x1 convs as int8 dot products, depthwise convs dequantizing inside their padding stage."""
    from tvm import ir, relax

    from qfa_deploy.deploy.targets.cpu.code_range import code_range
    from qfa_deploy.deploy.targets.cpu.conv_rewrite import rewrite_convs

    dequantize = ir.Op.get("relax.dequantize")

    def rewrite(builder, call, lookup_binding):
        operands = _integer_operands(call, lookup_binding, dequantize)
        if operands is None:
            return None
        codes, weight, zero_point = operands
        attrs = call.attrs
        strides, padding = [int(v) for v in attrs.strides], [int(v) for v in attrs.padding]
        if int(attrs.groups) == 1 and weight.shape[2:] != (1, 1) and weight[0].size <= MAX_PATCH_TAPS:
            codes, weight, zero_point = _as_patches(builder, codes, weight, zero_point, strides, padding)
            strides, padding = [1, 1], [0, 0, 0, 0]
        if int(attrs.groups) == 1 and weight.shape[2:] == (1, 1) and strides == [1, 1] and not any(padding):
            code_bits = int(code_range(codes, lookup_binding, int(weight.shape[1]))[1].max()).bit_length()
            own = None
            if plan.pointwise_lowering is not None:
                own = plan.pointwise_lowering(builder, codes, weight[:, :, 0, 0], zero_point, code_bits)
            if own is not None:
                return "own", own
            offset = plan.offset_for(code_bits)
            packed, comp = pack_weight(weight[:, :, 0, 0], zero_point, plan.tile_lanes(int(weight.shape[0])),
                                       plan.group, offset)
            return "pointwise", builder.call_te(
                _pointwise_int8, codes, relax.const(packed), relax.const(comp), int(weight.shape[0]), offset,
                primfunc_name_hint="conv2d_int8",
            )
        if int(attrs.groups) != weight.shape[0] or weight.shape[0] != codes.ty.shape[1] or weight.shape[1] != 1:
            return None
        # depthwise: no channel sum for a dot product to take, but reading the uint8 codes (not their
        # float copy) lets the producer write a quarter of the bytes
        channels = int(weight.shape[0])
        lanes16 = next((n for n in plan.depthwise_int16_lanes if channels % n == 0), None)
        deviation = code_deviation(zero_point, code_range(codes, lookup_binding, channels)) if lanes16 else None
        if lanes16 and depthwise_int16_sums(weight, deviation):
            lanes, sums = lanes16, "int16"
            narrow = plan.depthwise_int8_planes and deviation.max(initial=0) <= 127
            dtype = "int8" if narrow else "int16"
        else:
            lanes, sums, dtype = plan.depthwise_block(channels), "float32", plan.depthwise_weight
        if not lanes:
            return None
        kind = "depthwise_int16" if sums == "int16" else "depthwise"
        return kind, builder.call_te(
            _depthwise_from_codes, codes, relax.const(pack_depthwise_weight(weight, lanes, dtype)),
            relax.const(zero_point.astype(np.int16 if sums == "int16" else np.float32)), strides, padding, sums,
            primfunc_name_hint="conv2d_codes",
        )

    mod, counts = rewrite_convs(mod, rewrite)
    log.info("integer convs (%s): %d 1x1 convs lowered to uint8 x int8 dot products (%d more by the target's "
             "own lowering), %d depthwise convs read codes (%d of them summing in int16)", plan.name,
             counts["pointwise"], counts["own"], counts["depthwise"] + counts["depthwise_int16"],
             counts["depthwise_int16"])
    return mod


def integer_rewrite(mod, plan: IntegerPlan, gemv_lanes: int):
    """An integer schedule's whole rewrite before legalization: the integer convs (``lower_integer_convs``),
    squeeze-excite weights transposed for ``gemv_lanes``-wide tiles, the epilogues that allow it as one
    FMA (``affine_epilogue``) or, with a hard-swish, three (``hardswish_epilogue``), divisions by
    constants without a division and clip bounds as immediates (the other epilogues' cost:
    ``exact_division``, ``clip_immediates``)."""
    from qfa_deploy.deploy.targets.cpu.affine_epilogue import fold_affine_epilogues
    from qfa_deploy.deploy.targets.cpu.clip_immediates import clip_bounds_as_immediates
    from qfa_deploy.deploy.targets.cpu.exact_division import divide_by_reciprocal
    from qfa_deploy.deploy.targets.cpu.gemv import transpose_gemv_weights
    from qfa_deploy.deploy.targets.cpu.hardswish_epilogue import fold_hardswish_epilogues

    mod = transpose_gemv_weights(lower_integer_convs(mod, plan), gemv_lanes)
    mod = fold_hardswish_epilogues(fold_affine_epilogues(mod))
    return clip_bounds_as_immediates(divide_by_reciprocal(mod))


def _integer_operands(call, lookup_binding, dequantize):
    """(codes var, int8 weight [O, C/g, kh, kw], zero points [C] int) if ``call`` is a conv of dequantized
    codes (scale 1) by dequantized int8 weights (scale 1, zero point 0), NCHW/OIHW, else None."""
    from tvm import ir

    attrs = call.attrs
    if ([int(d) for d in attrs.dilation] != [1, 1]
            or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"):
        return None
    data, weight = (lookup_binding(arg) if isinstance(arg, ir.expr.Var) else None for arg in call.args)
    if not all(isinstance(e, ir.expr.Call) and e.op == dequantize for e in (data, weight)):
        return None
    codes, w_int = data.args[0], weight.args[0]
    if not isinstance(w_int, ir.expr.Constant) or w_int.value.dtype != "int8":
        return None
    if codes.ty.dtype != "uint8" or codes.ty.ndim != 4:
        return None
    w = w_int.value.numpy()
    if w.ndim != 4:
        return None
    scales = [_constant(data.args[1]), _constant(weight.args[1])]
    zero_point, w_zero = _constant(data.args[2]), _constant(weight.args[2])
    if any(s is None or not np.all(s == 1.0) for s in scales) or w_zero is None or np.any(w_zero != 0):
        return None
    channels = int(codes.ty.shape[1])
    if zero_point is None or zero_point.size not in (1, channels):
        return None
    return codes, w, np.broadcast_to(zero_point.astype(np.int64).reshape(-1), (channels,))


def _as_patches(builder, codes, weight: np.ndarray, zero_point: np.ndarray, strides, padding):
    """A k x k conv (one group) as a 1x1 conv of its patches: (codes var [N, C*k*k, OH, OW] uint8, weight
    [O, C*k*k, 1, 1], zero points [C*k*k]). Padding is the zero point's code (the graph pads q - Z with 0),
    and every partial sum is an integer below 2^24 whatever its order, so the sums are the graph's."""
    from tvm import relax

    from qfa_deploy.deploy.targets.cpu.conv_rewrite import OPAQUE

    out_ch, in_ch, kh, kw = weight.shape
    call = builder.call_te(_patches, codes, relax.const(zero_point.astype(np.uint8)), kh, kw, strides, padding,
                           primfunc_name_hint="conv2d_patches")
    # opaque to fusion: the codes' producer (the input's quantize) runs once per code, not once per tap
    gvar = call.args[0]
    builder.update_func(gvar, builder.get()[gvar].with_attr("op_pattern", OPAQUE))
    return builder.emit(call), weight.reshape(out_ch, in_ch * kh * kw, 1, 1), np.repeat(zero_point, kh * kw)


def _patches(codes, zero_point, kh: int, kw: int, strides, padding):
    """TE: codes [N, C, H, W] -> [N, C*kh*kw, OH, OW], channel c*kh*kw + ky*kw + kx the tap (ky, kx) of c."""
    from tvm import te, tirx

    n, channels, height, width = codes.shape
    top, left, bottom, right = padding
    sh, sw = strides
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1

    def tap(i, k, y, x):
        c, ky, kx = k // (kh * kw), k // kw % kh, k % kw
        row, col = y * sh + ky - top, x * sw + kx - left
        inside = tirx.all(row >= 0, row < height, col >= 0, col < width)
        return tirx.if_then_else(inside, codes[i, c, row, col], zero_point[c])

    return te.compute((n, channels * kh * kw, out_h, out_w), tap, name="patches")


def _constant(expr):
    from tvm import ir

    return expr.value.numpy() if isinstance(expr, ir.expr.Constant) else None


def pack_weight(w: np.ndarray, zero_point: np.ndarray, lanes: int, group: int = 4,
                code_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights [O, C] int8 -> [O/lanes, C/group, lanes, group] (zero-padded), and the compensation
    comp[O] = sum_c (Z[c] - code_offset) w[o, c] (int32)."""
    out_ch, in_ch = w.shape
    o_pad, c_pad = -(-out_ch // lanes) * lanes, -(-in_ch // group) * group
    padded = np.zeros((o_pad, c_pad), np.int8)
    padded[:out_ch, :in_ch] = w
    packed = padded.reshape(o_pad // lanes, lanes, c_pad // group, group).transpose(0, 2, 1, 3)
    comp = (w.astype(np.int64) @ (zero_point - code_offset)).astype(np.int32)
    return np.ascontiguousarray(packed), comp


def pack_codes(codes, groups: int, group: int, code_offset: int, name: str):
    """TE: codes [N, C, H, W] uint8 -> [N, groups, H, W, group], ``group`` channels of a pixel side by
    side, shifted to ``q - code_offset`` (an int8) when ``code_offset`` is set; zero beyond C."""
    from tvm import te, tirx

    n, channels, height, width = codes.shape

    def code(i, c, y, x):
        if not code_offset:
            return codes[i, c, y, x]
        return (codes[i, c, y, x].astype("int16") - code_offset).astype("int8")  # exact: q - 128 is an int8

    def pack(i, g, y, x, k):
        c = g * group + k
        if int(channels) % group == 0:
            return code(i, c, y, x)
        zero = tirx.const(0, "int8" if code_offset else "uint8")  # meets a zero weight: adds nothing
        return tirx.if_then_else(c < channels, code(i, c, y, x), zero)

    return te.compute((n, groups, height, width, group), pack, name=name)


def _pointwise_int8(codes, packed, comp, out_channels: int, code_offset: int):
    """TE: codes [N, C, H, W] uint8, packed weights, comp [O] int32 -> float32 [N, O, H, W]."""
    from tvm import te

    n, _, height, width = codes.shape
    o_blocks, c_groups, lanes, group = (int(d) for d in packed.shape)
    codes_g = pack_codes(codes, c_groups, group, code_offset, INT8_BLOCKS[0])
    g = te.reduce_axis((0, c_groups), "g")
    k = te.reduce_axis((0, group), "k")
    acc = te.compute(
        (n, o_blocks, height, width, lanes),
        lambda i, ob, y, x, lane: te.sum(
            codes_g[i, g, y, x, k].astype("int32") * packed[ob, g, lane, k].astype("int32"), axis=[g, k]
        ),
        name=INT8_BLOCKS[1],
    )
    return te.compute(
        (n, out_channels, height, width),
        lambda i, o, y, x: (acc[i, o // lanes, y, x, o % lanes] - comp[o]).astype("float32"),
        name=INT8_BLOCKS[2],
    )


def pack_depthwise_weight(w: np.ndarray, lanes: int, dtype: str = "float32") -> np.ndarray:
    """Depthwise weights [C, 1, kh, kw] (int8) -> [C/lanes, kh, kw, lanes] ``dtype``: one vector per tap and
    block; as int8 a quarter of the bytes of float32, the same values."""
    channels, _, kh, kw = w.shape
    blocked = w.astype(dtype).reshape(channels // lanes, lanes, kh, kw).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(blocked)


def depthwise_int16_sums(weight: np.ndarray, deviation: np.ndarray) -> bool:
    """True if every sum of a depthwise conv of (q - Z) by ``weight`` [C, 1, kh, kw] fits an int16, where
    ``deviation`` [C] is max |q - Z| per channel (``code_deviation``): sum over taps |w| * max|q - Z| <= 32767.

    The same bound holds for every partial sum (a sum over fewer taps), so no lane ever overflows."""
    bound = np.abs(weight.astype(np.int64)).reshape(weight.shape[0], -1).sum(axis=1) * deviation
    return bool(bound.max(initial=0) <= np.iinfo(np.int16).max)


def code_deviation(zero_point: np.ndarray, codes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """max |q - Z| per channel for codes q in ``codes`` = (lowest, highest)."""
    lowest, highest = codes
    return np.maximum(np.maximum(highest - zero_point, zero_point - lowest), 0).astype(np.int64)


def _depthwise_from_codes(codes, weight, zero_point, strides, padding, sums: str = "float32"):
    """TE: a depthwise conv of (codes - Z) [N, C, H, W], zero padded, computed channel-blocked.

    The padding stage dequantizes the uint8 codes into planes of ``lanes`` channels side by side
    ([N, C/lanes, Hp, Wp, lanes]), so every tap of the kernel is one contiguous vector load and one FMA
    against the tap's weight vector whatever the stride or width; the sum runs over (kh, kw) in order,
    as TOPI's conv sums it. The last stage writes NCHW floats, onto which the conv's epilogue fuses.

    With ``sums="int16"`` (``depthwise_int16_sums`` proved they fit) the planes hold ``q - Z`` in the
    weights' integer type (int16, or int8 where every ``|q - Z| <= 127``), the products and sums are
    int16, converted to float32 once per output: the same integers.
    """
    from tvm import te, tirx

    n, channels, height, width = codes.shape
    blocks, kh, kw, lanes = (int(d) for d in weight.shape)
    plane = str(weight.dtype) if sums == "int16" else "float32"
    top, left, bottom, right = padding
    sh, sw = strides

    def pad(i, cb, y, x, lane):
        inside = tirx.all(y >= top, y < height + top, x >= left, x < width + left)
        c = cb * lanes + lane
        value = codes[i, c, y - top, x - left].astype(zero_point.dtype) - zero_point[c]
        return tirx.if_then_else(inside, value.astype(plane), tirx.const(0, plane))

    padded = te.compute((n, blocks, height + top + bottom, width + left + right, lanes), pad,
                        name=DEPTHWISE_BLOCKS[0])

    product = "int16" if sums == "int16" else "float32"

    def tap(cb, ry, rx, lane):  # an integer weight (int8 storage) as float32 or int16: exact
        return weight[cb, ry, rx, lane].astype(product)

    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    acc = te.compute(
        (n, blocks, out_h, out_w, lanes),
        lambda i, cb, y, x, lane: te.sum(
            padded[i, cb, y * sh + ry, x * sw + rx, lane].astype(product) * tap(cb, ry, rx, lane), axis=[ry, rx]
        ),
        name=DEPTHWISE_BLOCKS[1],
    )
    return te.compute(
        (n, channels, out_h, out_w),
        lambda i, c, y, x: acc[i, c // lanes, y, x, c % lanes].astype("float32"),
        name=DEPTHWISE_BLOCKS[2],
    )
