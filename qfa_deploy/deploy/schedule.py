"""CPU schedules for untuned workloads: ``generic``, ``tiled-cpu`` (the default) and ``tiled-vnni``.

TVM 0.27 compiles untuned CPU workloads as naive loop nests, one thread, every stage of a fused
function (padding, conv, bias add, quantize/clip/cast, dequantize) materialised in its own buffer.

- ``generic_cpu_schedule``, applied after legalization and fusion, (1) inlines each injective stage
  into its consumer (or, for epilogues, into its producer) where TIR allows it, and (2) marks the
  outermost loop of every remaining stage ``parallel`` where that is legal.
- ``tiled_cpu_schedule`` register-tiles the conv2d functions on top (see its docstring); the
  squeeze-excite convs, rewritten by ``gemv_lowering.transpose_gemv_weights`` before legalization,
  read their weights transposed.
- ``tiled_vnni_schedule`` runs the integer convs rewritten by ``int8_lowering.lower_integer_convs``
  before legalization: 1x1 convs as uint8 x int8 dot products on AVX512-VNNI, depthwise convs
  channel-blocked (one vector of channels per tap); the rest as ``tiled-cpu``.

None changes any output's value: the first two reorder no sum, and the exported graph's convs sum
integers exactly (below 2^24) in any order, so all are bit-identical to the naive build (parity
tests). Functions a tuning database already scheduled are left alone. Measured figures:
docs/deploy.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.gemv_lowering import GEMV_BLOCK, transpose_gemv_weights

__all__ = ["CPU_SCHEDULES", "CpuSchedule", "generic_cpu_schedule", "tiled_cpu_schedule", "tiled_vnni_schedule"]

log = logging.getLogger(__name__)

# TVM 0.27's mark of a PrimFunc a schedule already owns (MetaSchedule's database, dlight; "tir." before
# the tirx rename): a function carrying it is left alone, and every function scheduled here gets it.
SCHEDULED_ATTR = "tirx.is_scheduled"


def generic_cpu_schedule(mod):
    """``mod`` (a legalized, fused Relax IRModule) with its unscheduled PrimFuncs scheduled as above."""
    count = _schedule_each(mod, _inline_and_parallelize)
    log.info("generic CPU schedule applied to %d functions", count)
    return mod


def _inline_and_parallelize(sch, name: str) -> bool:
    try:
        root = sch.get_sblock("root")
    except Exception:  # no root block (an extern or already lowered function)
        return False
    for block in sch.get_child_blocks(root):
        _inline(sch, block)
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        if not loops or _channels_in_lanes(sch, block):
            continue
        if set(_iter_kinds(sch, block)) == {"S"} and len(loops) > 1:
            _parallel_rows(sch, block)  # elementwise (quantize, clip, add): the batch loop has one iteration
        else:
            _try(sch.parallel, loops[0])
    return True


def _channels_in_lanes(sch, block) -> bool:
    """A global pooling ([1, C, 1, 1] summed over H, W) with the channels in the vector lanes, blocks of
    them in parallel: each lane still sums its channel in order, so the result is bit-identical, but
    the additions of a vector of channels overlap (one serial chain per channel was latency-bound:
    ~0.6 ms of a 10 ms subnet on one thread, and the batch loop it ran in parallel has one iteration)."""
    extents = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if _iter_kinds(sch, block) != "SSSSRR" or extents[0] != 1 or extents[2:4] != [1, 1] or len(loops) != 6:
        return False
    lanes = next((n for n in (2 * _LANES, _LANES) if extents[1] % n == 0), None)
    if lanes is None:
        return False
    n, c, y, x, ry, rx = loops
    c_outer, c_lane = sch.split(c, [None, lanes])
    sch.reorder(n, c_outer, y, x, ry, rx, c_lane)
    sch.parallel(sch.fuse(n, c_outer))
    sch.vectorize(c_lane)
    sch.decompose_reduction(block, ry)  # after: the init block inherits the vector loop
    return True


def _iter_kinds(sch, block) -> str:
    """The block's iteration variables as a string: S spatial, R reduction, ? other (e.g. "SSSSRRR")."""
    return "".join("S" if iv.iter_type == 0 else "R" if iv.iter_type == 2 else "?" for iv in sch.get(block).iter_vars)


def _schedule_each(mod, schedule_one) -> int:
    """Run ``schedule_one(sch, name) -> bool`` on every PrimFunc of ``mod`` that no schedule has claimed yet;
    the functions it scheduled replace their originals, marked scheduled. Returns their number."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        try:
            sch = Schedule(func)
        except Exception:  # not a schedulable function
            continue
        if schedule_one(sch, gvar.name_hint):
            updates[gvar] = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    for gvar, func in updates.items():
        mod[gvar] = func
    return len(updates)


def _inline(sch, block) -> None:
    if not _try(sch.compute_inline, block):
        _try(sch.reverse_compute_inline, block)


def _try(primitive, *args) -> bool:
    try:
        primitive(*args)
        return True
    except Exception as exc:  # the primitive's own legality check said no: leave that stage as it is
        log.debug("%s refused: %s", getattr(primitive, "__name__", primitive), one_line(exc))
        return False


def _is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


# ---------------------------------------------------------------------------------------------
# "tiled-cpu": register-tiled conv2d (opt-in)
# ---------------------------------------------------------------------------------------------

_CONV_BLOCKS = ("conv2d_nchw", "group_conv2d_nchw", GEMV_BLOCK)
_LANES = 8  # float32 lanes of an AVX2 register (AVX-512 hosts run these 256-bit tiles too)
_ACC_BUDGET = 12  # vector accumulators per register tile (AVX2 has 16 ymm registers)


def tiled_cpu_schedule(mod):
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
    count = _schedule_each(mod, _tile_conv_or_leave)
    log.info("tiled CPU schedule: %d conv functions tiled", count)
    return generic_cpu_schedule(mod)  # the rest (it skips functions marked scheduled)


def _tile_conv_or_leave(sch, name: str) -> bool:
    try:
        return _tile_conv(sch)
    except Exception as exc:  # a primitive refused: this function gets the generic schedule instead
        log.warning("tiled-cpu: %s left to the generic schedule (%s)", name, one_line(exc))
        return False


def _tile_conv(sch) -> bool:
    """Register-tile the one conv2d block of ``sch``; False (``sch`` untouched) if there is none."""
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    convs = [b for b in blocks if sch.get(b).name_hint in _CONV_BLOCKS]
    if len(convs) != 1:
        return False
    conv = convs[0]
    iters = sch.get(conv).iter_vars
    loops = sch.get_loops(conv)
    if _iter_kinds(sch, conv) != "SSSSRRR" or len(loops) != 7:
        return False
    _n, co, oh, ow, ci, kh, kw = (int(iv.dom.extent) for iv in iters)
    pointwise = kh == 1 and kw == 1
    depthwise = sch.get(conv).name_hint == "group_conv2d_nchw" and not pointwise
    gemv = pointwise and oh * ow == 1 and co % _LANES == 0
    if oh * ow == 1 and not gemv:
        return False
    producers = sch.get_producers(conv)
    # the epilogue: fold every injective stage after the conv into the one stage that writes the output
    for block in blocks:
        if not any(sch.get(block).same_as(sch.get(b)) for b in (conv, *producers)):
            _inline(sch, block)
    consumers = sch.get_consumers(conv)
    if len(consumers) > 1:
        raise ValueError("conv output read by several stages")

    n, f, y, x, rc, ry, rx = loops
    if gemv:
        # 1x1 pixel (squeeze-excite, classifier): the vector runs over output channels instead
        unroll = next(u for u in (4, 2, 1) if co % (u * _LANES) == 0)
        fo, fu, fv = sch.split(f, [None, unroll, _LANES])
        sch.reorder(n, fo, y, x, rc, ry, rx, fu, fv)
        outer, tile, vec, unrolled = sch.fuse(n, fo), x, fv, fu
    else:
        cols, co_i = _pick_tile(co, ow, max_channels=4 if depthwise else 12)
        fo, fi = sch.split(f, [None, co_i])
        xo, xi = sch.split(x, [None, cols])
        if pointwise:  # stream the larger operand through the cache once: its loop goes outermost
            channels_outer = co * ci > ci * oh * ow
        else:  # depthwise: a channel tile's padded planes are made once; stem: the input is small
            channels_outer = depthwise
        if channels_outer:
            sch.reorder(n, fo, y, xo, rc, ry, rx, fi, xi)
            outer, tile = sch.fuse(n, fo), xo
        else:
            sch.reorder(n, y, xo, fo, rc, ry, rx, fi, xi)
            outer, tile = sch.fuse(n, y, xo), fo
        vec, unrolled = xi, fi
    acc = sch.cache_write(conv, 0, "local")
    # the epilogue runs on the tile, reading the accumulators; one that reads the conv output with
    # another shape (a squeeze-excite scale broadcast over a feature map) stays a stage of its own
    if consumers and not _try(sch.reverse_compute_inline, consumers[0]):
        _parallel_rows(sch, consumers[0])
    sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
    for block in producers:
        if pointwise:
            sch.compute_inline(block)  # an identity copy ("padding" by nothing)
        elif depthwise:
            sch.compute_at(block, outer, preserve_unit_loops=True)
            _fill_then_copy(sch, block)
    # parallel before the reduction is split into init + update: after, two blocks write the
    # accumulators under the loop and the parallel primitive refuses (it was silently serial)
    sch.parallel(outer)  # a refusal here is a bug (it once left every conv serial): fail loudly into the log
    sch.unroll(unrolled)
    sch.vectorize(vec)
    sch.decompose_reduction(conv, rc)  # the init stage inherits the tile loops' unroll/vectorize
    _vectorize_tile(sch, acc, over_channels=gemv)
    return True


def _parallel_rows(sch, block) -> None:
    """An elementwise stage over a feature map: its rows in parallel, each row in vectors. (Parallel
    on the batch loop alone ran it on one thread, element by element: 1 ms of a 12 ms subnet for one
    squeeze-excite scale.) A stage with a condition (padding) is not vectorized: its loads would run
    for every lane, out of bounds too."""
    loops = sch.get_loops(block)
    if len(loops) == 1:
        _try(sch.parallel, loops[0])
        return
    _try(sch.parallel, sch.fuse(*loops[:-1]))
    if "if_then_else" in sch.get(block).script():
        return
    width = int(sch.get(loops[-1]).extent)
    if width <= 4 * _LANES:
        _try(sch.vectorize, loops[-1])
        return
    lanes = next((n for n in (2 * _LANES, _LANES) if width % n == 0), None)
    if lanes is not None:
        _try(sch.vectorize, sch.split(loops[-1], [None, lanes])[1])


def _fill_then_copy(sch, pad) -> None:
    """Padding as a zero fill of the tile's planes and a condition-free copy of the interior, vectorized."""
    loops = sch.get_loops(pad)
    fill = sch.decompose_padding(pad, loops[-4])
    for block in (fill, pad):
        inner = sch.get_loops(block)[-1]
        if int(sch.get(inner).extent) <= 8 * _LANES:
            sch.vectorize(inner)


def _vectorize_tile(sch, block, over_channels: bool) -> None:
    """Vectorize the epilogue stage at the tile along the tile's vector axis, unroll the other."""
    _n, c, _h, w = sch.get_loops(block)[-4:]  # the tile's n, c, h, w
    if over_channels:
        c_out, c_vec = sch.split(c, [None, _LANES])
        sch.vectorize(c_vec)
        if int(sch.get(c_out).extent) > 1:
            sch.unroll(c_out)
    else:
        sch.vectorize(w)
        if int(sch.get(c).extent) > 1:
            sch.unroll(c)


def _pick_tile(co: int, ow: int, max_channels: int) -> tuple[int, int]:
    """(cols, co_i): a tile of ``cols`` pixels of a row by ``co_i`` channels, both dividing the output.

    At most two vectors of pixels (wider tiles and tail predicates both measured several times
    slower), the best lane utilisation (14 of 16 lanes for rows of 7, 14, 28), then as many
    channels as the accumulator budget allows.
    """

    def score(cols):
        nvec = -(-cols // _LANES)
        return cols / (nvec * _LANES), cols

    cols = max((d for d in _divisors(ow) if d <= 2 * _LANES), key=score)
    nvec = -(-cols // _LANES)
    co_i = next(c for c in (12, 8, 6, 4, 3, 2, 1) if c <= max_channels and co % c == 0 and c * nvec <= _ACC_BUDGET)
    return cols, co_i


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# "tiled-vnni": 1x1 convs as uint8 x int8 dot products (AVX512-VNNI), the rest as "tiled-cpu"
# ---------------------------------------------------------------------------------------------


def tiled_vnni_schedule(mod):
    """``mod`` (lowered by ``int8_lowering.lower_integer_convs`` before legalization) with its int8
    pointwise functions tensorized on VNNI and its depthwise convs tiled channel-blocked, every other
    PrimFunc as ``tiled_cpu_schedule``."""
    from qfa_deploy.deploy.int8_lowering import (
        keep_codes_blocked,
        schedule_depthwise_blocked,
        schedule_int8_pointwise,
    )

    mod = keep_codes_blocked(mod)

    counts = {"pointwise": 0, "depthwise": 0}

    def lowered_or_leave(sch, name: str) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        for kind, schedule_one in (("pointwise", schedule_int8_pointwise), ("depthwise", schedule_depthwise_blocked)):
            try:
                if schedule_one(sch, blocks, _inline):
                    counts[kind] += 1
                    return True
            except Exception as exc:  # left to the generic schedule: correct, but slow
                log.warning("tiled-vnni: %s not scheduled (%s)", name, one_line(exc))
                return False
        return False

    _schedule_each(mod, lowered_or_leave)
    log.info("tiled-vnni: %d int8 pointwise functions tensorized, %d depthwise functions channel-blocked",
             counts["pointwise"], counts["depthwise"])
    return tiled_cpu_schedule(mod)


class CpuSchedule(NamedTuple):
    name: str  # what the artifact's meta.json records
    apply: Callable  # on the legalized, fused Relax module
    rewrite: Callable | None = None  # on the imported Relax module, before legalization
    needs: str | None = None  # an LLVM CPU feature the target must have


def _lower_integer_convs(mod):
    from qfa_deploy.deploy.int8_lowering import lower_integer_convs

    return transpose_gemv_weights(lower_integer_convs(mod), _LANES)


# compile_artifact's ``schedule`` value -> how it is applied
CPU_SCHEDULES = {
    "generic": CpuSchedule("generic-cpu", generic_cpu_schedule),
    "tiled-cpu": CpuSchedule("tiled-cpu", tiled_cpu_schedule, partial(transpose_gemv_weights, lanes=_LANES)),
    "tiled-vnni": CpuSchedule("tiled-vnni", tiled_vnni_schedule, _lower_integer_convs, "avx512vnni"),
}
