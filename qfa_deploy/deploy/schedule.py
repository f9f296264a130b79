"""A generic CPU schedule for untuned workloads: inline the cheap stages, run the outer loop in parallel.

TVM 0.27 compiles untuned CPU workloads as naive loop nests, one thread, every stage of a fused
function (padding, conv, bias add, quantize/clip/cast, dequantize) materialised in its own buffer.
This pass, applied after legalization and fusion, (1) inlines each injective stage into its
consumer (or, for epilogues, into its producer) where TIR allows it, and (2) marks the outermost
loop of every remaining stage ``parallel`` where that is legal. It changes the order of no
arithmetic inside a stage, so results stay bit-identical to the untuned build (checked by the
parity tests). Functions a tuning database already scheduled are left alone.

Speed is unconfirmed: all measurements so far were taken while a training job held both cores of
this 2-core machine at a higher priority. One qfa-mbv3-w1.2 subnet at 224, 2 threads, same run:
5520 ms untuned -> 2184 ms (compile 49 s -> 21 s); but bench/deploy_latency.py later showed no gain
(1 thread: 1081 vs 1104 ms, 2 threads: 800 vs 767 ms). Measure on an idle machine before relying on it.
"""

from __future__ import annotations

import logging

__all__ = ["generic_cpu_schedule"]

log = logging.getLogger(__name__)


def generic_cpu_schedule(mod):
    """``mod`` (a legalized, fused Relax IRModule) with its unscheduled PrimFuncs scheduled as above."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        try:
            sch = Schedule(func)
            root = sch.get_sblock("root")
        except Exception:  # no root block (an extern or already lowered function)
            continue
        for block in sch.get_child_blocks(root):
            _inline(sch, block)
        for block in sch.get_child_blocks(root):
            loops = sch.get_loops(block)
            if loops:
                _try(sch.parallel, loops[0])
        updates[gvar] = sch.mod["main"].with_attr("tir.is_scheduled", True)
    for gvar, func in updates.items():
        mod[gvar] = func
    log.info("generic CPU schedule applied to %d functions", len(updates))
    return mod


def _inline(sch, block) -> None:
    if not _try(sch.compute_inline, block):
        _try(sch.reverse_compute_inline, block)


def _try(primitive, *args) -> bool:
    try:
        primitive(*args)
        return True
    except Exception:  # the primitive's own legality check said no: leave that stage as it is
        return False


def _is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and "tir.is_scheduled" in attrs and bool(attrs["tir.is_scheduled"])
