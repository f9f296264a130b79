"""The TIR scheduling helpers every CPU target shares, and the ``generic`` schedule built from them.

TVM 0.27 compiles untuned CPU workloads as naive loop nests, one thread, every stage of a fused
function (padding, conv, bias add, quantize/clip/cast, dequantize) materialised in its own buffer.
``generic_cpu_schedule``, applied after legalization and fusion, (1) inlines each injective stage
into its consumer (or, for epilogues, into its producer) where TIR allows it, and (2) marks the
outermost loop of every remaining stage ``parallel`` where that is legal; elementwise stages run
their rows in parallel, a vector per row, and global poolings sum a vector of channels at a time.
The targets' own schedules (``qfa_deploy.deploy.targets``) build on these helpers; none changes any
output's value. Functions a tuning database already scheduled are left alone.
"""

from __future__ import annotations

import logging
from functools import partial

from qfa_deploy.deploy._text import one_line

__all__ = [
    "SCHEDULED_ATTR", "accumulator_tile", "generic_cpu_schedule", "inline", "inline_all_but", "is_scheduled",
    "iter_kinds", "parallel_rows", "schedule_each", "try_primitive",
]

log = logging.getLogger(__name__)

# TVM 0.27's mark of a PrimFunc a schedule already owns (MetaSchedule's database, dlight; "tir." before
# the tirx rename): a function carrying it is left alone, and every function scheduled here gets it.
SCHEDULED_ATTR = "tirx.is_scheduled"


def generic_cpu_schedule(mod, unit):
    """``mod`` (a legalized, fused Relax IRModule) with its unscheduled PrimFuncs scheduled as above,
    vectors of ``unit.lanes()`` floats (a ``registry.VectorUnit``)."""
    count = schedule_each(mod, partial(_inline_and_parallelize, lanes=unit.lanes()))
    log.info("generic CPU schedule applied to %d functions", count)
    return mod


def _inline_and_parallelize(sch, name: str, lanes: int) -> bool:
    try:
        root = sch.get_sblock("root")
    except Exception:  # no root block (an extern or already lowered function)
        return False
    for block in sch.get_child_blocks(root):
        inline(sch, block)
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        if not loops or _channels_in_lanes(sch, block, lanes):
            continue
        if set(iter_kinds(sch, block)) == {"S"} and len(loops) > 1:
            parallel_rows(sch, block, lanes)  # elementwise (quantize, clip, add): the batch loop has one iteration
        else:
            try_primitive(sch.parallel, loops[0])
    return True


def _channels_in_lanes(sch, block, vector: int) -> bool:
    """A global pooling ([1, C, 1, 1] summed over H, W) with the channels in the vector lanes, blocks of
    them in parallel: each lane still sums its channel in order, so the result is bit-identical, but
    the additions of a vector of channels overlap (one serial chain per channel was latency-bound:
    ~0.6 ms of a 10 ms subnet on one thread, and the batch loop it ran in parallel has one iteration)."""
    extents = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if iter_kinds(sch, block) != "SSSSRR" or extents[0] != 1 or extents[2:4] != [1, 1] or len(loops) != 6:
        return False
    lanes = next((n for n in (2 * vector, vector) if extents[1] % n == 0), None)
    if lanes is None:
        return False
    n, c, y, x, ry, rx = loops
    c_outer, c_lane = sch.split(c, [None, lanes])
    sch.reorder(n, c_outer, y, x, ry, rx, c_lane)
    sch.parallel(sch.fuse(n, c_outer))
    sch.vectorize(c_lane)
    sch.decompose_reduction(block, ry)  # after: the init block inherits the vector loop
    return True


def accumulator_tile(sch, block):
    """The stage caching ``block``'s output (its accumulators), in a buffer the tile loops will shrink.

    Its scope is "global": TVM 0.27's LowerTVMBuiltin keeps a CPU buffer under 1 KB on the stack only
    in that scope and serves every other one from the runtime's workspace pool, an alloc/free pair
    per tile (with "local" tiles ~3500 pairs per inference of the CIFAR-10 preset, 7% of its
    simulated Cortex-A76 cycles)."""
    return sch.cache_write(block, 0, "global")


def iter_kinds(sch, block) -> str:
    """The block's iteration variables as a string: S spatial, R reduction, ? other (e.g. "SSSSRRR")."""
    return "".join("S" if iv.iter_type == 0 else "R" if iv.iter_type == 2 else "?" for iv in sch.get(block).iter_vars)


def schedule_each(mod, schedule_one) -> int:
    """Run ``schedule_one(sch, name) -> bool`` on every PrimFunc of ``mod`` that no schedule has claimed yet;
    the functions it scheduled replace their originals, marked scheduled. Returns their number."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
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


def inline(sch, block) -> None:
    if not try_primitive(sch.compute_inline, block):
        try_primitive(sch.reverse_compute_inline, block)


def inline_all_but(sch, blocks, keep, *, forward_only: bool = False) -> None:
    """Inline each of ``blocks`` (a root's child blocks) that is not one of ``keep`` (the stages a
    kernel's schedule tiles), so that the conversions, compensation and epilogue around them become
    one stage writing the output. ``forward_only``: no reverse inlining (a stage a kernel keeps of
    its own, such as lane sums, must not absorb its consumers)."""
    kept = [sch.get(b) for b in keep]
    for block in blocks:
        if any(sch.get(block).same_as(k) for k in kept):
            continue
        if forward_only:
            try_primitive(sch.compute_inline, block)
        else:
            inline(sch, block)


def try_primitive(primitive, *args) -> bool:
    try:
        primitive(*args)
        return True
    except Exception as exc:  # the primitive's own legality check said no: leave that stage as it is
        log.debug("%s refused: %s", getattr(primitive, "__name__", primitive), one_line(exc))
        return False


def is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


def parallel_rows(sch, block, vector: int) -> None:
    """An elementwise stage over a feature map: its rows in parallel, each row in vectors. (Parallel
    on the batch loop alone ran it on one thread, element by element: 1 ms of a 12 ms subnet for one
    squeeze-excite scale.) A stage with a condition (padding) is not vectorized: its loads would run
    for every lane, out of bounds too. ``vector``: float lanes of one register."""
    loops = sch.get_loops(block)
    if len(loops) == 1:
        try_primitive(sch.parallel, loops[0])
        return
    try_primitive(sch.parallel, sch.fuse(*loops[:-1]))
    if "if_then_else" in sch.get(block).script():
        return
    width = int(sch.get(loops[-1]).extent)
    if width <= 4 * vector:
        try_primitive(sch.vectorize, loops[-1])
        return
    lanes = next((n for n in (2 * vector, vector) if width % n == 0), None)
    if lanes is not None:
        try_primitive(sch.vectorize, sch.split(loops[-1], [None, lanes])[1])
