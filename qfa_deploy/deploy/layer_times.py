"""Where an inference's time goes: per compiled function, and per kind of layer.

On this machine the Relax VM calls an instrument before and after each of its calls; the time between
the two is the call's. Each function's time per inference is the median over ``runs`` inferences of
its summed calls. The instrument adds a little to every call: ``call_floor_us`` (the median of the
runtime's no-op calls) says how much, so a kind of many tiny calls can be read with it in mind.

A simulated device reports the same breakdown from its cycle counts (``deploy.sim.functions``).

The kinds come from the names the compile pipeline gives its kernels (``primfunc_name_hint`` in
``deploy.targets``), fused with their epilogues: "fused_conv2d_int8_hardswish_codes2_blocked".
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

import numpy as np

__all__ = ["KINDS", "kind_of", "measure_vm", "summarize"]

# (pattern searched in a function's name, kind); the first match names it
KINDS = (
    # the VM's builtins; under simulation, functions of the runtime's libraries ("LIBRARY:function")
    (re.compile(r"^vm\.builtin\.|^(libtvm|libc|libm|libstdc|libgcc|libpthread|ld-linux|python)[^:]*:|^\[jit"),
     "runtime (allocations, checks)"),
    (re.compile(r"conv2d_(int8|pairwise|bitserial)"), "1x1 conv, integer"),
    (re.compile(r"conv2d_codes"), "depthwise conv on codes"),
    (re.compile(r"conv2d_patches"), "stem conv, integer"),
    (re.compile(r"conv2d_gemv"), "1x1 conv on a 1x1 map (squeeze-excite, head)"),
    (re.compile(r"conv2d"), "conv, float"),
    (re.compile(r"(^|[_:])(mean|adaptive_avg_pool|avg_pool)"), "global pooling"),
    (re.compile(r"matmul|dense"), "matmul"),
)
OTHER = "elementwise (quantize, requantize, activations)"
NO_OP = "vm.builtin.null_value"


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if pattern.search(name):
            return kind
    return OTHER


def measure_vm(vm, args: list, runs: int) -> dict:
    """Per-function times of ``vm["main"](*args)`` over ``runs`` instrumented inferences (the VM is
    assumed warm). The instrument is removed afterwards."""
    per_run: list[dict[str, float]] = []  # seconds per function, one dict per inference
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def instrument(_func, symbol, before_run, _ret, *_args):
        now = time.perf_counter()
        if before_run:
            started.append(now)
        else:
            per_run[-1][symbol] += now - started.pop()
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run as usual

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            per_run.append(defaultdict(float))
            vm["main"](*args)
    finally:
        vm.set_instrument(None)
    names = sorted({name for run in per_run for name in run})
    ms = {name: float(np.median([run.get(name, 0.0) for run in per_run])) * 1e3 for name in names}
    floor = 1e3 * ms[NO_OP] / (calls[NO_OP] / runs) if calls.get(NO_OP) else None  # us per call
    return summarize({name: (ms[name], calls[name] / runs) for name in names}, runs=runs,
                     source="instrumented VM calls (this machine)", call_floor_us=floor)


def summarize(functions: dict[str, tuple[float, float]], *, runs: int, source: str,
              call_floor_us: float | None = None) -> dict:
    """JSON-ready breakdown of ``{function: (ms per inference, calls per inference or None where not
    counted)}``: functions and kinds, each sorted by time."""
    rows = sorted(({"function": name, "kind": kind_of(name), "calls": calls, "ms": ms}
                   for name, (ms, calls) in functions.items()), key=lambda r: -r["ms"])
    kinds: dict[str, dict] = {}
    for row in rows:
        kind = kinds.setdefault(row["kind"], {"kind": row["kind"], "functions": 0, "calls": 0.0, "ms": 0.0})
        kind["functions"] += 1
        kind["calls"] = None if row["calls"] is None or kind["calls"] is None else kind["calls"] + row["calls"]
        kind["ms"] += row["ms"]
    total = sum(r["ms"] for r in rows)
    for part in (*rows, *kinds.values()):
        part["share"] = part["ms"] / total if total else 0.0
    return {"source": source, "runs": runs, "sum_ms": total, "call_floor_us": call_floor_us,
            "kinds": sorted(kinds.values(), key=lambda k: -k["ms"]), "functions": rows}
