"""1x1 convs on ARMv8.0 NEON as 8-bit-lane widening multiplies: ``smull`` + ``smlal2`` + ``sadalp``.

The Cortex-A72 multiplies on one pipe: a Q-form ``mla`` (8 x int16) or a ``smlal`` (4 x int32) takes
it for 2 or 1 cycles, so the widening multiply-accumulate path (``targets.cpu.integer``'s, LLVM's
``smlal``/``smlal2``) peaks at 4 products per cycle. A multiply of 8-bit lanes (``smull`` of 8 int8
pairs into int16) does 8 per cycle, and the pairwise add into int32 (``sadalp``) runs on the other
pipe: per 16 channels of one pixel and one output channel, ``smull`` (channels 0-7), ``smlal2``
(channels 8-15, into the same int16 lanes) and one ``sadalp`` (4 int32 lanes), as ruy's and
gemmlowp's ARMv8.0 kernels do.

Exactness (the integer contract): the codes are shifted to ``q - 128`` (an int8, as for ``sdot``) and
the compensation takes the shift back, ``sum (q - 128) w - sum (Z - 128) w = sum (q - Z) w``. An int16
lane holds two products, each at most ``128 * max|w|``: exact while ``max|w| <= 127`` (every weight
but -128, which the b-bit grids never use; a conv holding one keeps the ``smlal`` path).

The compute, per conv: ``int8_pack`` shifts the codes into groups of 16 channels [N, C/16, H, W, 16]
(channels beyond C meet zero weights), ``int8_dot`` sums them into 4 int32 lanes per output channel
[N, O/4, H, W, 4, 4] (lane ``j`` holds channels ``2j, 2j+1, 2j+8, 2j+9`` of each group: the lanes
``sadalp`` adds) and ``int8_lane_sum`` adds the 4 lanes and ``int8_out`` subtracts the compensation. The schedule
tensorizes one (pixel, output channel, group) on ``qfa_smull_sadalp_16`` in tiles of 4 pixels (of a
row, or 2 x 2 where rows are 14 wide) x 4 output channels (16 accumulator registers, 8 operand
registers; on 7 x 7 maps one pixel x up to 12 output channels), and a pixel's lane sums on
``qfa_addp_4x4``: three ``addp`` turn its 4 accumulators into one vector of 4 output channels, where
LLVM's own reduction moved lanes one by one (CIFAR-10 largest on the simulated A72: -4% cycles).
"""

from __future__ import annotations

import numpy as np

from qfa_deploy.deploy.targets.cpu.integer import INT8_BLOCKS, pack_codes, pack_weight

__all__ = [
    "CODE_OFFSET", "GROUP", "SUM_LANES", "TILE_OUT", "lower_pairwise", "pack_weight_pairwise",
    "register_lane_sum_intrinsic", "register_pairwise_intrinsic", "schedule_pairwise_pointwise",
]

GROUP = 16  # channels of a pixel side by side: one q register of int8 codes
SUM_LANES = 4  # int32 lanes per output channel (one sadalp)
TILE_OUT = 4  # output channels of a tile
_TILE_PIXELS = 4
CODE_OFFSET = 128
_INTRINSIC = "qfa_smull_sadalp_16"
_LANE_SUM_INTRINSIC = "qfa_addp_4x4"
_LANES_BLOCK = "int8_lane_sum"


def _channel_of(lane, term):
    """The channel of a group that sum lane ``lane`` takes as its ``term``-th product (0..3)."""
    return 2 * lane + term % 2 + 8 * (term // 2)


def pack_weight_pairwise(w: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights [O, C] int8 -> [O/4, C/16, 4, 16] (zero padded), and comp[O] = sum_c (Z[c] - 128) w[o, c]."""
    return pack_weight(w, zero_point, TILE_OUT, GROUP, CODE_OFFSET)


def lower_pairwise(builder, codes, weight: np.ndarray, zero_point: np.ndarray):
    """A ``call_te`` of the pairwise 1x1 conv, or None where its int16 pairs could overflow (a -128 weight)."""
    from tvm import relax

    if weight.min() < -127:
        return None
    packed, comp = pack_weight_pairwise(weight, zero_point)
    return builder.call_te(_pointwise_pairwise, codes, relax.const(packed), relax.const(comp), int(weight.shape[0]),
                           INT8_BLOCKS, primfunc_name_hint="conv2d_pairwise")


def _pointwise_pairwise(codes, packed, comp, out_channels: int, names):
    """TE: codes [N, C, H, W] uint8, packed weights, comp [O] int32 -> float32 [N, O, H, W]."""
    from tvm import te

    n, _, height, width = codes.shape
    o_blocks, groups, tile, _ = (int(d) for d in packed.shape)
    codes_g = pack_codes(codes, groups, GROUP, CODE_OFFSET, names[0])
    g, term = te.reduce_axis((0, groups), "g"), te.reduce_axis((0, 4), "term")
    acc = te.compute(
        (n, o_blocks, height, width, tile, SUM_LANES),
        lambda i, ob, y, x, o, lane: te.sum(
            codes_g[i, g, y, x, _channel_of(lane, term)].astype("int32")
            * packed[ob, g, o, _channel_of(lane, term)].astype("int32"),
            axis=[g, term],
        ),
        name=names[1],
    )
    lane = te.reduce_axis((0, SUM_LANES), "lane")
    out_shape = (n, out_channels, height, width)
    total = te.compute(out_shape, lambda i, o, y, x: te.sum(acc[i, o // tile, y, x, o % tile, lane], axis=lane),
                       name=_LANES_BLOCK)
    return te.compute(out_shape, lambda i, o, y, x: (total[i, o, y, x] - comp[o]).astype("float32"), name=names[2])


def register_pairwise_intrinsic() -> str:
    """Register (once per process) C[4] int32 += the pairwise sums of A[16] * B[16] (int8) as
    ``smull`` + ``smlal2`` + ``sadalp``; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(_INTRINSIC, allow_missing=True) is not None:
        return _INTRINSIC
    low, high = list(range(8)), list(range(8, 16))

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((GROUP,), "int8", offset_factor=1),
        B: T.Buffer((GROUP,), "int8", offset_factor=1),
        C: T.Buffer((SUM_LANES,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:SUM_LANES], A[0:GROUP], B[0:GROUP])
            T.writes(C[0:SUM_LANES])
            for lane, term in T.grid(SUM_LANES, 4):
                with T.sblock("update"):
                    vl, vt = T.axis.remap("SR", [lane, term])
                    # the channel _channel_of(vl, vt)
                    C[vl] = C[vl] + T.Cast("int32", A[2 * vl + vt % 2 + 8 * (vt // 2)]) * T.Cast(
                        "int32", B[2 * vl + vt % 2 + 8 * (vt // 2)])

    @T.prim_func(s_tir=True)
    def instruction(
        A: T.Buffer((GROUP,), "int8", offset_factor=1),
        B: T.Buffer((GROUP,), "int8", offset_factor=1),
        C: T.Buffer((SUM_LANES,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:SUM_LANES], A[0:GROUP], B[0:GROUP])
            T.writes(C[0:SUM_LANES])
            # no named temporaries: each would become a local buffer, allocated per call
            C[T.ramp(0, 1, SUM_LANES)] = C.vload([0], "int32x4") + T.call_llvm_pure_intrin(  # sadalp
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                T.call_llvm_pure_intrin(  # smull of channels 0-7, + smull of 8-15: smlal2
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                    T.Shuffle([A.vload([0], "int8x16")], low), T.Shuffle([B.vload([0], "int8x16")], low),
                    dtype="int16x8",
                ) + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                    T.Shuffle([A.vload([0], "int8x16")], high), T.Shuffle([B.vload([0], "int8x16")], high),
                    dtype="int16x8",
                ),
                dtype="int32x4",
            )

    TensorIntrin.register(_INTRINSIC, semantics, instruction)
    return _INTRINSIC


def register_lane_sum_intrinsic() -> str:
    """Register (once per process) C[o] += sum of A[o, 0:4] for 4 output channels (int32) as three
    ``addp``: the 4 sadalp lanes of 4 accumulators to one vector of 4 channels, without lane moves."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(_LANE_SUM_INTRINSIC, allow_missing=True) is not None:
        return _LANE_SUM_INTRINSIC

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((TILE_OUT, SUM_LANES), "int32", offset_factor=1),
        C: T.Buffer((TILE_OUT,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:TILE_OUT], A[0:TILE_OUT, 0:SUM_LANES])
            T.writes(C[0:TILE_OUT])
            for o, lane in T.grid(TILE_OUT, SUM_LANES):
                with T.sblock("update"):
                    vo, vl = T.axis.remap("SR", [o, lane])
                    C[vo] = C[vo] + A[vo, vl]

    def addp(a, b):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), a, b,
                                       dtype="int32x4")

    @T.prim_func(s_tir=True)
    def instruction(
        A: T.Buffer((TILE_OUT, SUM_LANES), "int32", offset_factor=1),
        C: T.Buffer((TILE_OUT,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:TILE_OUT], A[0:TILE_OUT, 0:SUM_LANES])
            T.writes(C[0:TILE_OUT])
            C[T.ramp(0, 1, TILE_OUT)] = C.vload([0], "int32x4") + addp(
                addp(A.vload([0, 0], "int32x4"), A.vload([1, 0], "int32x4")),
                addp(A.vload([2, 0], "int32x4"), A.vload([3, 0], "int32x4")),
            )

    TensorIntrin.register(_LANE_SUM_INTRINSIC, semantics, instruction)
    return _LANE_SUM_INTRINSIC


def schedule_pairwise_pointwise(sch, blocks) -> bool:
    """Tile and tensorize the pairwise 1x1 conv of ``sch`` (a fused PrimFunc made from
    ``_pointwise_pairwise``); False if it has none. ``blocks`` are the root's child blocks."""
    from qfa_deploy.deploy.schedule import inline_all_but, try_primitive
    from qfa_deploy.deploy.targets.cpu.integer_schedule import iterate_blocked, vectorize_gather, vectorize_output

    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in INT8_BLOCKS[:2]):
        return False
    if _LANES_BLOCK not in named:
        return False
    pack, dot, lanes = named[INT8_BLOCKS[0]], named[INT8_BLOCKS[1]], named[_LANES_BLOCK]
    # the compensation and the conv's epilogue: one stage writing the output; the lane sums stay their own
    inline_all_but(sch, blocks, (pack, dot, lanes), forward_only=True)
    (out,) = sch.get_consumers(lanes)
    blocked = iterate_blocked(sch, out)

    n, ob, y, x, o, lane, g, term = sch.get_loops(dot)
    height, width = int(sch.get(y).extent), int(sch.get(x).extent)
    pixels = max(d for d in range(1, min(width, _TILE_PIXELS) + 1) if width % d == 0)
    rows = max(d for d in range(1, _TILE_PIXELS // pixels + 1) if height % d == 0)
    # a tile's epilogue is one dependent chain per vector of 4 output channels: rows of 14 take 2 x 2
    # pixels, rows of 7 one pixel x up to 3 channel tiles (12 sums and 12 weight registers), not a chain
    # or two (simulated A72, w1.2-0: 14x14 convs 0.85-0.89x their cycles, 7x7 0.83-0.98x)
    channel_blocks = int(sch.get(ob).extent)
    # the tile's channels must not straddle the blocks its codes are written in (a consumer's wider block)
    out_block = int(sch.get(out).writes[0].source.shape[-1]) if blocked else TILE_OUT
    fits = [d for d in range(1, 4)
            if channel_blocks % d == 0 and (d * TILE_OUT % out_block == 0 or out_block % (d * TILE_OUT) == 0)]
    channel_tiles = max(fits) if pixels * rows == 1 else 1
    xo, xi = sch.split(x, [None, pixels])
    inner = [xi]
    if rows > 1:
        y, yi = sch.split(y, [None, rows])
        inner = [yi, xi]
    if channel_tiles > 1:
        ob, obi = sch.split(ob, [None, channel_tiles])
        inner = [obi, *inner]
    sch.reorder(n, ob, y, xo, g, *inner, o, lane, term)
    for loop in inner[:-1]:
        sch.unroll(loop)
    outer = sch.fuse(n, ob, y)
    sch.reverse_compute_at(lanes, xo, preserve_unit_loops=True)
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    # the lane sums per pixel as one vector of the tile's 4 output channels: [N, H, W, O]
    sch.transform_layout(lanes, ("write", 0), lambda i, c, y, x: (i, y, x, c))
    *_, lane_o, lane_y, lane_x, lane_lane = sch.get_loops(lanes)
    if channel_tiles > 1:  # one lane-sum intrinsic per 4 output channels
        lane_tile, lane_o = sch.split(lane_o, [None, TILE_OUT])
        sch.reorder(lane_x, lane_y, lane_tile, lane_o, lane_lane)
    else:
        sch.reorder(lane_x, lane_y, lane_o, lane_lane)
    sch.parallel(outer)
    sch.decompose_reduction(dot, g)
    sch.tensorize(lane, register_pairwise_intrinsic())
    sch.decompose_reduction(lanes, lane_o)
    # a tile cut short by a channel count that is no multiple of 4 keeps LLVM's lane moves
    try_primitive(sch.tensorize, lane_o, register_lane_sum_intrinsic())
    sch.unroll(xi)
    sch.unroll(o)
    vectorize_output(sch, out, blocked)
    pack_loops = sch.get_loops(pack)
    sch.parallel(sch.fuse(*pack_loops[:3]))
    vectorize_gather(sch, pack)
    return True
