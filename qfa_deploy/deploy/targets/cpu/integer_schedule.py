"""TIR schedules of the integer convs of ``targets.cpu.integer``, cut for a target's :class:`IntegerPlan`.

- ``schedule_int8_pointwise``: a 1x1 conv's tile of ``lanes`` output channels x up to the register
  file's worth of pixels of a row, summed over the packed channel groups; the dot product is
  tensorized on the plan's instruction (``vpdpbusd``, ``sdot``) or, with none, vectorized over the
  output channels for LLVM to select widening multiply-accumulates.
- ``schedule_depthwise_blocked``: the channel-blocked depthwise conv, one vector of channels per tap.
- ``integer_schedule``: both, after ``keep_codes_blocked``, and every other function as ``tiled-cpu``.
"""

from __future__ import annotations

import logging
from functools import partial

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.schedule import accumulator_tile, inline_all_but, schedule_each
from qfa_deploy.deploy.targets.cpu.blocked_codes import keep_codes_blocked
from qfa_deploy.deploy.targets.cpu.blocked_constants import block_position_constants
from qfa_deploy.deploy.targets.cpu.integer import DEPTHWISE_BLOCKS, INT8_BLOCKS, IntegerPlan
from qfa_deploy.deploy.targets.cpu.tiled import tiled_cpu_schedule

__all__ = [
    "integer_schedule", "iterate_blocked", "schedule_depthwise_blocked", "schedule_int8_pointwise", "vectorize_gather",
    "vectorize_output",
]

log = logging.getLogger(__name__)


def integer_schedule(mod, plan: IntegerPlan, float_unit):
    """``mod`` (lowered by ``lower_integer_convs(mod, plan)`` before legalization, then legalized and
    fused) with its integer pointwise functions tiled (and tensorized) and its depthwise convs tiled
    channel-blocked, every other PrimFunc as ``tiled_cpu_schedule`` with ``float_unit``."""
    mod = block_position_constants(keep_codes_blocked(mod, plan.name))
    counts = {"own": 0, "pointwise": 0, "depthwise": 0}

    def lowered_or_leave(sch, name: str) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        kinds = (("pointwise", partial(schedule_int8_pointwise, plan=plan)),
                 ("depthwise", partial(schedule_depthwise_blocked, plan=plan)))
        if plan.pointwise_schedule is not None:  # its functions hold the int8 stages too: tried first
            kinds = (("own", plan.pointwise_schedule), *kinds)
        for kind, schedule_one in kinds:
            try:
                if schedule_one(sch, blocks):
                    counts[kind] += 1
                    return True
            except Exception as exc:  # left to the generic schedule: correct, but slow
                log.warning("%s: %s not scheduled (%s)", plan.name, name, one_line(exc))
                return False
        return False

    schedule_each(mod, lowered_or_leave)
    log.info("%s: %d int8 pointwise functions scheduled (%d more by the target's own schedule), %d depthwise "
             "functions channel-blocked", plan.name, counts["pointwise"], counts["own"], counts["depthwise"])
    return tiled_cpu_schedule(mod, float_unit)


def schedule_int8_pointwise(sch, blocks, plan: IntegerPlan) -> bool:
    """Tile (and tensorize) the int8 dot product of ``sch`` (a fused PrimFunc made from
    ``integer._pointwise_int8``); False if it has none. ``blocks`` are the root's child blocks."""
    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in INT8_BLOCKS):
        return False
    pack, dot = named[INT8_BLOCKS[0]], named[INT8_BLOCKS[1]]
    inline_all_but(sch, blocks, (pack, dot))  # the conversion and the conv's epilogue: one stage writing the output
    (out,) = sch.get_consumers(dot)
    blocked = iterate_blocked(sch, out)
    # blocked codes hold a group's channels side by side, and a group of one is the codes themselves:
    # read in place. Shifted codes (q - 128) stay a stage: a tensor intrinsic matches plain operands.
    source = sch.get(pack).reads[0].source
    in_place = len(source.shape) == 5 or plan.group == 1
    code_dtype = str(sch.get(pack).writes[0].source.dtype)
    packed_in_place = in_place and code_dtype == str(source.dtype)
    # two words of a pixel's codes as one load, each sdot taking its word as a lane: the 4-channel groups
    # even, the codes read in place where blocked in eights, else packed in eights (in sixteens, TVM does
    # not see a pair of words as one region)
    paired = (plan.lane_dot is not None and int(sch.get(sch.get_loops(dot)[5]).extent) % 2 == 0
              and (not packed_in_place or (len(source.shape) == 5 and int(source.shape[4]) == 8)))
    if packed_in_place:
        sch.compute_inline(pack)
    elif paired:
        def pairs(i, g, y, x, k):
            return i, g // 2, y, x, g % 2 * 4 + k

        sch.transform_layout(pack, ("write", 0), pairs)
        sch.transform_block_layout(pack, pairs)

    n, ob, y, x, lane, g, k = sch.get_loops(dot)
    width, lanes = int(sch.get(x).extent), int(sch.get(lane).extent)
    # paired: two groups' weights stay in registers beside the sums, and the codes' vector
    held = 2 * plan.unit.registers_for(lanes) + 2 if paired else 0
    cols = max(d for d in range(1, min(width, plan.tile_columns(lanes, held=held)) + 1) if width % d == 0)
    xo, xi = sch.split(x, [None, cols])
    if plan.dot is None:  # the lanes innermost, vectorized: LLVM picks the widening multiply-accumulates
        sch.reorder(n, ob, y, xo, g, k, xi, lane)
    elif paired:
        g, pair = sch.split(g, [None, 2])
        sch.reorder(n, ob, y, xo, g, xi, lane, pair, k)
    else:
        sch.reorder(n, ob, y, xo, g, xi, lane, k)
    outer = sch.fuse(n, ob, y)
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.parallel(outer)
    if plan.dot is None:  # vectorized before the split into init and update, which both inherit it
        sch.unroll(xi)
        sch.vectorize(lane)
        sch.decompose_reduction(dot, g)
    else:
        init = sch.decompose_reduction(dot, g)
        sch.vectorize(sch.get_loops(init)[-1])
        if paired:
            sch.tensorize(lane, plan.lane_dot(lanes, code_dtype))
        else:
            if lanes > plan.dot_lanes:  # several instructions per pixel, each on its own accumulator register
                lane = sch.split(lane, [None, plan.dot_lanes])[1]
            sch.tensorize(lane, plan.dot(int(sch.get(lane).extent), code_dtype))
        sch.unroll(xi)
    vectorize_output(sch, out, blocked)
    if not packed_in_place:
        pack_loops = sch.get_loops(pack)
        sch.parallel(sch.fuse(*pack_loops[:3]))
        if len(source.shape) == 5:  # blocked codes: a pixel's channels contiguous
            vectorize_gather(sch, pack)  # (NCHW codes: LLVM's own vectorization over pixels, st4, is better)
    return True


def schedule_depthwise_blocked(sch, blocks, plan: IntegerPlan) -> bool:
    """Register-tile the channel-blocked depthwise conv of ``sch`` (a fused PrimFunc made from
    ``integer._depthwise_from_codes``); False if it has none. Arguments as ``schedule_int8_pointwise``."""
    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in DEPTHWISE_BLOCKS):
        return False
    pad, conv = named[DEPTHWISE_BLOCKS[0]], named[DEPTHWISE_BLOCKS[1]]
    inline_all_but(sch, blocks, (pad, conv))  # the NCHW write and the conv's epilogue: one stage
    (out,) = sch.get_consumers(conv)
    blocked = iterate_blocked(sch, out)

    n, cb, y, x, lane, ry, rx = sch.get_loops(conv)
    width = int(sch.get(x).extent)
    bits = 16 if str(sch.get(conv).writes[0].source.dtype) == "int16" else 32  # int16 sums: 8 NEON lanes a register
    # each accumulator's tap input is loaded into a register too: half the register file for sums
    cols_max = plan.tile_columns(int(sch.get(lane).extent), share=2, element_bits=bits)
    cols = max(d for d in range(1, min(width, cols_max) + 1) if width % d == 0)
    xo, xi = sch.split(x, [None, cols])
    sch.reorder(n, cb, y, xo, ry, rx, xi, lane)
    outer = sch.fuse(n, cb)
    sch.compute_inline(accumulator_tile(sch, conv))  # the output stage reads the accumulators
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.compute_at(pad, outer, preserve_unit_loops=True)
    fill = sch.decompose_padding(pad, sch.get_loops(pad)[-3])
    sch.vectorize(sch.get_loops(fill)[-1])
    vectorize_gather(sch, pad)
    sch.parallel(outer)
    sch.unroll(xi)
    sch.vectorize(lane)
    sch.decompose_reduction(conv, ry)
    vectorize_output(sch, out, blocked)
    return True


def vectorize_gather(sch, block) -> None:
    """The innermost loop of ``block`` (a stage copying a pixel's block of channels out of the codes:
    a depthwise conv's padding stage, a 1x1 conv's packing of 16-channel groups), vectorized. Where
    the codes' writer keeps narrower tiles than the block (the A72's 4-channel 1x1 tiles and 8-channel
    depthwise blocks), the block is gathered out of several tiles: one vector per tile, so that each
    is a contiguous load (vectorized as one, the copy loaded the block byte by byte at computed
    addresses: 5x the depthwise conv's own cycles on the simulated A72)."""
    lane = sch.get_loops(block)[-1]
    width = int(sch.get(lane).extent)
    source = sch.get(block).reads[0].source.shape
    tile = int(source[4]) if len(source) == 5 else width
    if tile >= width or width % tile:
        sch.vectorize(lane)
        return
    tiles, within = sch.split(lane, [None, tile])
    sch.vectorize(within)
    sch.unroll(tiles)


def iterate_blocked(sch, out) -> bool:
    """If ``out`` (the stage writing the function's output) writes blocked codes [N, C/lanes, H, W, lanes]
    (``keep_codes_blocked``), make it iterate in that order too; True if so."""
    shape = sch.get(out).writes[0].source.shape
    if len(shape) != 5:
        return False
    lanes = int(shape[-1])
    sch.transform_block_layout(out, lambda n, c, y, x: (n, c // lanes, y, x, c % lanes))
    return True


def vectorize_output(sch, out, blocked: bool) -> None:
    """The output stage at a tile: blocked, a vector of channels per pixel (as the tile holds them);
    NCHW, a vector of pixels per channel (a transpose of the tile)."""
    loops = sch.get_loops(out)
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2] if blocked else loops[-3])
