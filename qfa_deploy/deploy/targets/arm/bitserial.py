"""Low-bit 1x1 convs on ARMv8.0 NEON as bit-serial popcounts: ``and`` + ``cnt`` + ``uadalp``.

With a-bit codes (``q < 2^a``: the clip in front of the quantize proves it, ``code_range``) and b-bit
weights in two's complement (``w = sum_{j<b-1} 2^j w_j - 2^(b-1) w_{b-1}``), the sum of a 1x1 conv
splits into bit planes:

    sum_c q[c] w[o, c] = sum_{i<a, j<b} s_j 2^(i+j) popcount(Q_i & W_j[o]),   s_j = -1 if j = b-1 else 1

``Q_i`` holds bit ``i`` of eight channels' codes a byte (``channel_of``), ``W_j[o]`` bit ``j`` of the weights.
Per 128 channels (one q register of each plane) and pair (i, j): ``and``, ``cnt`` (a popcount per
byte) and ``uadalp`` (bytes added pairwise into 8 uint16 lanes), three instructions either of the
Cortex-A72's two NEON pipes issues, for 128 one-bit products; ``targets.arm.pairwise`` takes its one
multiply pipe for two cycles per 16 eight-bit products. So W2A2 (4 pairs) runs ~2.7x the products per
cycle of the multiply path, W3A2 ~1.8x, W3A3 about the same and W4A4 fewer: ``prefers_bitserial``
picks it where a conv's pairs and its channels padded to 128 make it cheaper.

Exact: every count is an integer; a uint16 lane gains at most 16 per 128 channels (a few hundred at
most over the widest conv), and the sums are int32; the zero points' compensation
``comp[o] = sum_c Z[c] w[o, c]`` is taken off in int32, as ``targets.cpu.integer`` does, and the
result converted to float32 for the graph's epilogue: bit-identical outputs.

The compute, per conv: ``bitserial_planes`` packs the codes of each pixel into ``a`` planes of
``G`` groups of 16 bytes [N, H, W, G, a, 16] (channels beyond C are zero), ``bitserial_dot`` sums each
(pixel, output channel, i, j) into 8 uint16 lanes, tensorized on ``qfa_and_cnt_uadalp_16``,
``bitserial_pairs`` adds each (pixel, output channel)'s a*b accumulators with the weights
s_j 2^(i+j) in int16 lanes (vectors: exact below ``int16_bound``), ``bitserial_widen`` adds
neighbouring lanes into 4 int32, ``bitserial_total`` adds those (three ``addp`` per 4 output
channels, ``targets.arm.pairwise``'s lane sum) and ``int8_out`` takes the compensation off.
"""

from __future__ import annotations

import math

import numpy as np

from qfa_deploy.deploy.targets.arm.pairwise import SUM_LANES, TILE_OUT, register_lane_sum_intrinsic
from qfa_deploy.deploy.targets.cpu.integer import BITSERIAL_BLOCKS, INT8_BLOCKS

__all__ = [
    "GROUP_BYTES", "GROUP_CHANNELS", "bits_of_weights", "channel_of", "lower_bitserial",
    "pack_weight_planes", "prefers_bitserial", "register_bitserial_intrinsic", "runs_bitserial",
    "schedule_bitserial_pointwise",
]

GROUP_BYTES = 16  # a q register: 128 channels of one bit plane
GROUP_CHANNELS = 8 * GROUP_BYTES
_SUM_LANES = 8  # uint16 lanes of one uadalp
_INTRINSIC = "qfa_and_cnt_uadalp_16"
_TILE_PIXELS = 3
_ACCUMULATORS = 16  # uint16x8 sums a tile keeps in registers (of 32: the rest hold the operand planes)


def bits_of_weights(weight: np.ndarray) -> int:
    """The fewest bits b whose signed grid [-2^(b-1), 2^(b-1)) holds every weight."""
    low, high = int(weight.min(initial=0)), int(weight.max(initial=0))
    return max(1, next(b for b in range(1, 9) if -(1 << (b - 1)) <= low and high < (1 << (b - 1))))


def prefers_bitserial(channels: int, code_bits: int, weight_bits: int) -> bool:
    """Whether the bit planes cost fewer cycles than the multiply path for a conv's input channels,
    counted per (pixel, output channel): 3 instructions per bit pair and group of 128 channels on two
    pipes, and about one group's worth more to weigh and add the pairs' lanes, against 2 multiply-pipe
    cycles per 16 channels; the bit planes must win by a fifth (their packing is extra): W2A2 from 128
    input channels, W2A3 / W3A2 from 384. Simulated on the A72 (w1.2 @224, W2A2): 0.5-0.8x the
    multiply path's cycles on the wide projection convs; a conv padded to one group (72 channels)
    took 1.3x."""
    planes = 1.5 * code_bits * weight_bits * (math.ceil(channels / GROUP_CHANNELS) + 1)
    multiplies = 2 * math.ceil(channels / 16)
    return planes <= 0.8 * multiplies


def runs_bitserial(channels: int, weight_bits: int, code_bits: int) -> bool:
    """Whether ``tiled-neon`` runs a 1x1 conv of ``channels`` inputs on bit planes: they are cheaper
    (``prefers_bitserial``) and the pairs' int16 sums cannot overflow. Its schedule's ``bit_kernel``:
    the convs whose latency follows their bits, which a latency table keys on."""
    fits = int16_bound(channels, code_bits, weight_bits) <= 32767
    return fits and prefers_bitserial(channels, code_bits, weight_bits)


def pack_weight_planes(w: np.ndarray, bits: int, tile: int) -> np.ndarray:
    """Weights [O, C] int8 on the ``bits``-bit grid -> bit planes of their ``bits``-bit two's complement
    [O/tile, G, tile, bits, 16] uint8 (``channel_of``'s order, zero padded)."""
    out_ch, in_ch = w.shape
    groups = -(-in_ch // GROUP_CHANNELS)
    o_pad = -(-out_ch // tile) * tile
    twos = np.zeros((o_pad, groups * GROUP_CHANNELS), np.uint8)
    twos[:out_ch, :in_ch] = w.astype(np.uint8) & np.uint8((1 << bits) - 1)
    by_bit = twos.reshape(o_pad, groups, 8, GROUP_BYTES)  # [O, G, bit r of a byte, byte m]: channel 16 r + m
    weights = (1 << np.arange(8, dtype=np.uint8))[None, None, :, None]
    planes = np.stack([(((by_bit >> j) & 1) * weights).sum(axis=2, dtype=np.uint8) for j in range(bits)], axis=2)
    planes = planes.reshape(o_pad // tile, tile, groups, bits, GROUP_BYTES).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(planes)


def channel_of(group, bit, byte):
    """The channel whose bit of a plane is bit ``bit`` of byte ``byte`` of group ``group``: byte m holds
    channels 16 r + m, so the 16 bytes of one bit r come from 16 consecutive channels (one vector)."""
    return group * GROUP_CHANNELS + bit * GROUP_BYTES + byte


def tile_outputs(code_bits: int, weight_bits: int) -> int:
    """Output channels of a tile: its a*b uint16x8 accumulators per channel within ``_ACCUMULATORS``."""
    return TILE_OUT if code_bits * weight_bits * TILE_OUT <= _ACCUMULATORS else 2


def lower_bitserial(builder, codes, weight: np.ndarray, zero_point: np.ndarray, code_bits: int):
    """A ``call_te`` of the bit-serial 1x1 conv for codes below ``2^code_bits``, or None where the
    multiply path is cheaper (``prefers_bitserial``)."""
    from tvm import relax

    out_ch, in_ch = weight.shape
    code_bits, weight_bits = max(1, code_bits), bits_of_weights(weight)
    if not runs_bitserial(in_ch, weight_bits, code_bits):
        return None
    tile = tile_outputs(code_bits, weight_bits)
    planes = pack_weight_planes(weight, weight_bits, tile)
    comp = (weight.astype(np.int64) @ zero_point.astype(np.int64)).astype(np.int32)
    return builder.call_te(_pointwise_bitserial, codes, relax.const(planes), relax.const(comp), out_ch, code_bits,
                           primfunc_name_hint="conv2d_bitserial")


def _pointwise_bitserial(codes, weight_planes, comp, out_channels: int, code_bits: int):
    """TE: codes [N, C, H, W] uint8 (below 2^code_bits), weight planes, comp [O] int32 -> float32 [N, O, H, W]."""
    from tvm import te, tirx

    n, channels, height, width = codes.shape
    o_blocks, groups, tile, weight_bits, _ = (int(d) for d in weight_planes.shape)

    r = te.reduce_axis((0, 8), "r")

    def plane_byte(i, y, x, g, bit, m):
        c = channel_of(g, r, m)
        code = tirx.if_then_else(c < channels, codes[i, tirx.min(c, channels - 1), y, x], tirx.const(0, "uint8"))
        return te.sum(((code >> bit.astype("uint8")) & tirx.const(1, "uint8")) << r.astype("uint8"), axis=r)

    planes = te.compute((n, height, width, groups, code_bits, GROUP_BYTES), plane_byte, name=BITSERIAL_BLOCKS[0])
    g, t = te.reduce_axis((0, groups), "g"), te.reduce_axis((0, 2), "t")
    dot = te.compute(
        (n, o_blocks, height, width, tile, code_bits, weight_bits, _SUM_LANES),
        lambda i, ob, y, x, o, bi, bj, lane: te.sum(
            tirx.popcount(planes[i, y, x, g, bi, 2 * lane + t] & weight_planes[ob, g, o, bj, 2 * lane + t])
            .astype("uint16"),
            axis=[g, t],
        ),
        name=BITSERIAL_BLOCKS[1],
    )
    pair_i, pair_j = te.reduce_axis((0, code_bits), "bi"), te.reduce_axis((0, weight_bits), "bj")

    def weighted(i, ob, y, x, o, lane):
        value = dot[i, ob, y, x, o, pair_i, pair_j, lane].astype("int16") << (pair_i + pair_j).astype("int16")
        return te.sum(tirx.if_then_else(pair_j == weight_bits - 1, -value, value), axis=[pair_i, pair_j])  # sign bit

    pairs = te.compute((n, o_blocks, height, width, tile, _SUM_LANES), weighted, name=BITSERIAL_BLOCKS[2])
    widened = te.compute(
        (n, o_blocks, height, width, tile, SUM_LANES),
        lambda i, ob, y, x, o, k: pairs[i, ob, y, x, o, 2 * k].astype("int32") + pairs[i, ob, y, x, o, 2 * k + 1],
        name=BITSERIAL_BLOCKS[3])
    k = te.reduce_axis((0, SUM_LANES), "k")
    out_shape = (n, out_channels, height, width)
    total = te.compute(out_shape, lambda i, o, y, x: te.sum(widened[i, o // tile, y, x, o % tile, k], axis=k),
                       name=BITSERIAL_BLOCKS[4])
    return te.compute(out_shape, lambda i, o, y, x: (total[i, o, y, x] - comp[o]).astype("float32"),
                      name=INT8_BLOCKS[2])


def int16_bound(channels: int, code_bits: int, weight_bits: int) -> int:
    """A bound on |the weighted sum over the bit pairs| in an int16 lane of ``bitserial_pairs`` (it
    must stay below 2^15): each lane adds 2 popcounts of at most 8 per group, weighted by at most
    sum_{i,j} 2^(i+j) = (2^a - 1)(2^b - 1)."""
    groups = -(-channels // GROUP_CHANNELS)
    return 16 * groups * ((1 << code_bits) - 1) * ((1 << weight_bits) - 1)


def register_bitserial_intrinsic() -> str:
    """Register (once per process) C[8] uint16 += the pairwise sums of popcount(A[16] & B[16]) (uint8)
    as ``and`` + ``cnt`` + ``uadalp``; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(_INTRINSIC, allow_missing=True) is not None:
        return _INTRINSIC

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((GROUP_BYTES,), "uint8", offset_factor=1),
        B: T.Buffer((GROUP_BYTES,), "uint8", offset_factor=1),
        C: T.Buffer((_SUM_LANES,), "uint16", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:_SUM_LANES], A[0:GROUP_BYTES], B[0:GROUP_BYTES])
            T.writes(C[0:_SUM_LANES])
            for lane, t in T.grid(_SUM_LANES, 2):
                with T.sblock("update"):
                    vl, vt = T.axis.remap("SR", [lane, t])
                    C[vl] = C[vl] + T.Cast("uint16", T.popcount(A[2 * vl + vt] & B[2 * vl + vt]))

    @T.prim_func(s_tir=True)
    def instruction(
        A: T.Buffer((GROUP_BYTES,), "uint8", offset_factor=1),
        B: T.Buffer((GROUP_BYTES,), "uint8", offset_factor=1),
        C: T.Buffer((_SUM_LANES,), "uint16", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:_SUM_LANES], A[0:GROUP_BYTES], B[0:GROUP_BYTES])
            T.writes(C[0:_SUM_LANES])
            C[T.ramp(0, 1, _SUM_LANES)] = C.vload([0], "uint16x8") + T.call_llvm_pure_intrin(  # uadalp
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.uaddlp.v8i16.v16i8"),
                T.call_llvm_pure_intrin(  # cnt
                    T.llvm_lookup_intrinsic_id("llvm.ctpop.v16i8"),
                    A.vload([0], "uint8x16") & B.vload([0], "uint8x16"),
                    dtype="uint8x16",
                ),
                dtype="uint16x8",
            )

    TensorIntrin.register(_INTRINSIC, semantics, instruction)
    return _INTRINSIC


def schedule_bitserial_pointwise(sch, blocks) -> bool:
    """Tile and tensorize the bit-serial 1x1 conv of ``sch`` (a fused PrimFunc made from
    ``_pointwise_bitserial``); False if it has none. ``blocks`` are the root's child blocks."""
    from qfa_deploy.deploy.schedule import inline_all_but, try_primitive
    from qfa_deploy.deploy.targets.cpu.integer_schedule import iterate_blocked, vectorize_output

    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in BITSERIAL_BLOCKS):
        return False
    planes, dot, pairs, widened, total = (named[name] for name in BITSERIAL_BLOCKS)
    # the compensation and the conv's epilogue: one stage writing the output
    inline_all_but(sch, blocks, (planes, dot, pairs, widened, total), forward_only=True)
    (out,) = sch.get_consumers(total)
    blocked = iterate_blocked(sch, out)

    # the planes: per pixel, bit plane and group, 8 steps (r) of 16 consecutive channels' bits into 16 bytes
    i, y, x, g, bit, m, r = sch.get_loops(planes)
    sch.reorder(i, y, x, g, bit, r, m)
    sch.parallel(sch.fuse(i, y))
    sch.vectorize(m)
    sch.unroll(r)
    sch.decompose_reduction(planes, r)

    n, ob, y, x, o, bi, bj, lane, g, t = sch.get_loops(dot)
    width = int(sch.get(x).extent)
    # pixels of a tile: independent chains for the out-of-order core (one pixel's and-cnt-add-addp-epilogue
    # chain is longer than the A72's window holds)
    pixels = max(d for d in range(1, min(width, _TILE_PIXELS) + 1) if width % d == 0)
    xo, xi = sch.split(x, [None, pixels])
    sch.reorder(n, ob, y, xo, g, xi, o, bi, bj, lane, t)
    outer = sch.fuse(n, ob, y)
    for stage in (pairs, widened, total, out):
        sch.reverse_compute_at(stage, xo, preserve_unit_loops=True)
    sch.parallel(outer)
    sch.decompose_reduction(dot, g)
    sch.tensorize(lane, register_bitserial_intrinsic())
    for loop in (xi, o, bi, bj):
        sch.unroll(loop)
    *_, p_x, p_o, p_lane, p_i, p_j = sch.get_loops(pairs)  # the pairs unrolled around a vector of 8 lanes
    sch.reorder(p_x, p_o, p_i, p_j, p_lane)
    for loop in (p_x, p_o, p_i, p_j):
        sch.unroll(loop)
    sch.vectorize(p_lane)  # before the split into init and update, which both inherit it
    sch.decompose_reduction(pairs, p_i)
    *_, w_x, w_o, w_k = sch.get_loops(widened)
    sch.unroll(w_x)
    sch.unroll(w_o)
    sch.vectorize(w_k)
    # the lane sums of a tile's 4 output channels as one vector (``addp``), as the pairwise kernel's
    sch.transform_layout(total, ("write", 0), lambda i, c, y, x: (i, y, x, c))
    *_, t_o, t_y, t_x, t_k = sch.get_loops(total)
    sch.reorder(t_x, t_y, t_o, t_k)
    sch.decompose_reduction(total, t_o)
    try_primitive(sch.tensorize, t_o, register_lane_sum_intrinsic())
    vectorize_output(sch, out, blocked)
    return True
