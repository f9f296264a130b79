"""``tiled-cpu``: register-tiled float conv2d, cut for the target's vector registers.

TVM's naive conv loop nests, tiled so that a tile of output channels x pixels of a row stays in
vector registers while the reduction runs outside it in its original order: every output is still
summed term by term as in the naive build, so the results are bit-identical. The tile sizes come
from the target's ``VectorUnit`` (float lanes per register, registers for accumulators): AVX2's 8 x
16 on x86 (AVX-512 hosts run these 256-bit tiles too), NEON's 4 x 32 on aarch64. Convs on a 1x1 map
read their weights transposed (``targets.cpu.gemv``, before legalization).
"""

from __future__ import annotations

import logging
from functools import partial

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.registry import TargetSchedule, VectorUnit
from qfa_deploy.deploy.schedule import (
    accumulator_tile,
    generic_cpu_schedule,
    inline,
    iter_kinds,
    parallel_rows,
    schedule_each,
    try_primitive,
)
from qfa_deploy.deploy.targets.cpu.gemv import GEMV_BLOCK, gemv_tile, transpose_gemv_weights

__all__ = ["float_schedules", "tiled_cpu_schedule"]

log = logging.getLogger(__name__)

_CONV_BLOCKS = ("conv2d_nchw", "group_conv2d_nchw", GEMV_BLOCK)


def float_schedules(arch: str, unit: VectorUnit) -> tuple[TargetSchedule, ...]:
    """``tiled-cpu`` and ``generic`` for a target ``arch`` whose float vectors are ``unit``'s."""
    lanes = unit.lanes()
    return (
        TargetSchedule("tiled-cpu", "tiled-cpu", arch, partial(tiled_cpu_schedule, unit=unit),
                       partial(transpose_gemv_weights, lanes=lanes),
                       summary=f"float convs register-tiled in {lanes}-lane vectors, naive summation order"),
        TargetSchedule("generic", "generic-cpu", arch, partial(generic_cpu_schedule, unit=unit),
                       summary="stages inlined, outer loops parallel"),
    )


def tiled_cpu_schedule(mod, unit):
    """``mod`` with its NCHW conv2d PrimFuncs register-tiled, every other PrimFunc as ``generic_cpu_schedule``.

    Per conv the output is cut into tiles of ``co_i`` channels x ``cols`` pixels of one row (both
    dividing the output, so no tail predicates), accumulated in a local buffer (channels unrolled,
    pixels vectorized) while the reduction loops (ci, kh, kw) run outside the tile in their original
    order: every output element is still summed term by term in the order of TVM's naive loops, so
    the results are bit-identical to ``schedule="none"`` and ``"generic"``. The epilogue (bias,
    activation, quantize/round/clip/cast, dequantize, residual add) is inlined into the stage that
    reads the tile's accumulators. Pointwise convs put the loop over the larger operand (weights or
    input) outermost; depthwise convs pad one channel tile's planes at a time (a zero fill and a
    vectorized copy; stride 2 reads them with strided vector loads: storing them de-interleaved
    measured 3-8x slower with TVM's layout transform); convs
    on a 1x1 map (squeeze-excite, classifier) vectorize over output channels instead. PrimFuncs with
    no such conv, or on which a primitive refuses, get the generic schedule.
    """
    count = schedule_each(mod, partial(_tile_conv_or_leave, unit=unit))
    log.info("tiled CPU schedule: %d conv functions tiled", count)
    return generic_cpu_schedule(mod, unit)  # the rest (it skips functions marked scheduled)


def _tile_conv_or_leave(sch, name: str, unit) -> bool:
    try:
        return _tile_conv(sch, unit.lanes(), unit.accumulators)
    except Exception as exc:  # a primitive refused: this function gets the generic schedule instead
        log.warning("tiled-cpu: %s left to the generic schedule (%s)", name, one_line(exc))
        return False


def _tile_conv(sch, lanes: int, budget: int) -> bool:
    """Register-tile the one conv2d block of ``sch`` (``lanes`` floats a vector, ``budget`` accumulator
    vectors a tile); False (``sch`` untouched) if there is none."""
    found = _the_conv(sch)
    if found is None:
        return False
    conv, blocks, loops = found
    _n, co, oh, ow, ci, kh, kw = (int(iv.dom.extent) for iv in sch.get(conv).iter_vars)
    pointwise = kh == 1 and kw == 1
    depthwise = sch.get(conv).name_hint == "group_conv2d_nchw" and not pointwise
    gemv = pointwise and oh * ow == 1 and co % lanes == 0
    if oh * ow == 1 and not gemv:
        return False
    producers = sch.get_producers(conv)
    consumers = _fold_epilogue(sch, blocks, conv, producers)
    if gemv:
        outer, tile, vec, unrolled = _cut_over_channels(sch, loops, co, lanes)
    else:
        cols, co_i = _pick_tile(co, ow, 4 if depthwise else 12, lanes, budget)
        # pointwise: stream the larger operand through the cache once, its loop outermost;
        # depthwise: a channel tile's padded planes are made once; stem: the input is small
        channels_outer = co * ci > ci * oh * ow if pointwise else depthwise
        outer, tile, vec, unrolled = _cut_rows(sch, loops, cols, co_i, channels_outer)
    acc = accumulator_tile(sch, conv)
    # the epilogue runs on the tile, reading the accumulators; one that reads the conv output with
    # another shape (a squeeze-excite scale broadcast over a feature map) stays a stage of its own
    if consumers and not try_primitive(sch.reverse_compute_inline, consumers[0]):
        parallel_rows(sch, consumers[0], lanes)
    sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
    for block in producers:
        if pointwise:
            sch.compute_inline(block)  # an identity copy ("padding" by nothing)
        elif depthwise:
            sch.compute_at(block, outer, preserve_unit_loops=True)
            _fill_then_copy(sch, block, lanes)
    # parallel before the reduction is split into init + update: after, two blocks write the
    # accumulators under the loop and the parallel primitive refuses (it was silently serial)
    sch.parallel(outer)  # a refusal here is a bug (it once left every conv serial): fail loudly into the log
    sch.unroll(unrolled)
    sch.vectorize(vec)
    sch.decompose_reduction(conv, loops[4])  # at rc; the init stage inherits the tile loops' unroll/vectorize
    _vectorize_tile(sch, acc, gemv, lanes)
    return True


def _the_conv(sch):
    """(the conv block, the root's child blocks, the conv's 7 loops) of ``sch``, or None unless it has
    exactly one NCHW conv block with n, c, h, w spatial and ci, kh, kw reduction loops."""
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    convs = [b for b in blocks if sch.get(b).name_hint in _CONV_BLOCKS]
    if len(convs) != 1:
        return None
    conv = convs[0]
    loops = sch.get_loops(conv)
    if iter_kinds(sch, conv) != "SSSSRRR" or len(loops) != 7:
        return None
    return conv, blocks, loops


def _fold_epilogue(sch, blocks, conv, producers) -> list:
    """Inline every injective stage after the conv into the one stage that writes the output; that
    stage (the conv's consumers: none or one)."""
    for block in blocks:
        if not any(sch.get(block).same_as(sch.get(b)) for b in (conv, *producers)):
            inline(sch, block)
    consumers = sch.get_consumers(conv)
    if len(consumers) > 1:
        raise ValueError("conv output read by several stages")
    return consumers


def _cut_over_channels(sch, loops, co: int, lanes: int) -> tuple:
    """A 1x1 pixel (squeeze-excite, classifier): the vector runs over output channels. (outer loop,
    tile loop, vector loop, unrolled loop)."""
    n, f, y, x, rc, ry, rx = loops
    fo, fu, fv = sch.split(f, [None, gemv_tile(co, lanes) // lanes, lanes])
    sch.reorder(n, fo, y, x, rc, ry, rx, fu, fv)
    return sch.fuse(n, fo), x, fv, fu


def _cut_rows(sch, loops, cols: int, co_i: int, channels_outer: bool) -> tuple:
    """Tiles of ``co_i`` channels x ``cols`` pixels of a row, the channel tiles' loop outermost or the
    rows'. (outer loop, tile loop, vector loop, unrolled loop)."""
    n, f, y, x, rc, ry, rx = loops
    fo, fi = sch.split(f, [None, co_i])
    xo, xi = sch.split(x, [None, cols])
    if channels_outer:
        sch.reorder(n, fo, y, xo, rc, ry, rx, fi, xi)
        outer, tile = sch.fuse(n, fo), xo
    else:
        sch.reorder(n, y, xo, fo, rc, ry, rx, fi, xi)
        outer, tile = sch.fuse(n, y, xo), fo
    return outer, tile, xi, fi


def _fill_then_copy(sch, pad, lanes: int) -> None:
    """Padding as a zero fill of the tile's planes and a condition-free copy of the interior, vectorized."""
    loops = sch.get_loops(pad)
    fill = sch.decompose_padding(pad, loops[-4])
    for block in (fill, pad):
        inner = sch.get_loops(block)[-1]
        if int(sch.get(inner).extent) <= 8 * lanes:
            sch.vectorize(inner)


def _vectorize_tile(sch, block, over_channels: bool, lanes: int) -> None:
    """Vectorize the epilogue stage at the tile along the tile's vector axis, unroll the other."""
    _n, c, _h, w = sch.get_loops(block)[-4:]  # the tile's n, c, h, w
    if over_channels:
        c_out, c_vec = sch.split(c, [None, lanes])
        sch.vectorize(c_vec)
        if int(sch.get(c_out).extent) > 1:
            sch.unroll(c_out)
    else:
        sch.vectorize(w)
        if int(sch.get(c).extent) > 1:
            sch.unroll(c)


def _pick_tile(co: int, ow: int, max_channels: int, lanes: int, budget: int) -> tuple[int, int]:
    """(cols, co_i): a tile of ``cols`` pixels of a row by ``co_i`` channels, both dividing the output.

    At most two vectors of pixels (wider tiles and tail predicates both measured several times
    slower), the best lane utilisation (14 of 16 lanes for rows of 7, 14, 28), then as many
    channels as the accumulator budget allows.
    """

    def score(cols):
        nvec = -(-cols // lanes)
        return cols / (nvec * lanes), cols

    cols = max((d for d in _divisors(ow) if d <= 2 * lanes), key=score)
    nvec = -(-cols // lanes)
    co_i = next(c for c in (12, 8, 6, 4, 3, 2, 1) if c <= max_channels and co % c == 0 and c * nvec <= budget)
    return cols, co_i


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
