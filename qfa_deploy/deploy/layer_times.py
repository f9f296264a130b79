"""Where an inference's time goes: per compiled function, and per kind of layer.

On this machine: one inference through the Relax VM's instrument records which functions it calls,
how often, and with which arguments; then each compiled kernel is timed alone on those arguments
(``time_evaluator``, median of ``KERNEL_PROTOCOL``'s repeats) and counted as often as it is called,
and the whole model is timed the same way. The rest of the whole, beyond the kernels, is the VM's own
calls (allocations, checks) and what running in sequence costs the kernels (cache misses). Timing each
call through the instrument instead read ~1 us of callback per call (the CIFAR-10 preset summed to
twice its latency).

A simulated device reports the same breakdown from its cycle counts (``deploy.sim.functions``).

The kinds come from the names the compile pipeline gives its kernels (``primfunc_name_hint`` in
``deploy.targets``), fused with their epilogues: "fused_conv2d_int8_hardswish_codes2_blocked".
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from qfa_deploy.deploy.device import MeasureProtocol

__all__ = ["KERNEL_PROTOCOL", "KINDS", "REST", "kind_of", "measure_library", "summarize"]

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
BUILTIN = "vm.builtin."
REST = "vm.builtin.* and between kernels"  # the whole less its kernels (a runtime kind by its name)
# each kernel (and the whole) alone: repeats of at least 10 ms, the median of 7
KERNEL_PROTOCOL = MeasureProtocol(warmup=1, number=1, repeat=7, min_repeat_ms=10)


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if pattern.search(name):
            return kind
    return OTHER


def measure_library(library: Path, device, args: list, protocol: MeasureProtocol = KERNEL_PROTOCOL) -> dict:
    """Per-function milliseconds of one inference of ``library``'s ``main`` on ``args`` (TVM tensors on
    ``device``), the kernels timed alone, the rest of the whole as ``REST``."""
    import tvm
    from tvm import relax

    executable = tvm.runtime.load_module(str(library))
    vm = relax.VirtualMachine(executable, device)
    calls, first_args = _record_calls(vm, args)
    whole = _median_seconds(vm, "main", device, args, protocol)
    kernels = _kernel_module(executable, [name for name in calls if not name.startswith(BUILTIN)])
    functions = {}
    for name, count in calls.items():
        if not name.startswith(BUILTIN):
            functions[name] = (1e3 * count * _median_seconds(kernels, name, device, first_args[name], protocol), count)
    builtin_calls = sum(count for name, count in calls.items() if name.startswith(BUILTIN))
    functions[REST] = (1e3 * whole - sum(ms for ms, _ in functions.values()), builtin_calls)
    return summarize(functions, runs=protocol.repeat, source="kernels timed alone on their arguments (this machine)")


def _record_calls(vm, args: list) -> tuple[Counter, dict]:
    """How often one inference calls each function, and the arguments of its first call."""
    calls: Counter = Counter()
    first_args: dict[str, tuple] = {}

    def instrument(_func, symbol, before_run, _ret, *call_args):
        if not before_run:
            calls[symbol] += 1
            first_args.setdefault(symbol, call_args)
        return 0  # VMInstrumentReturnKind.NO_OP: run as usual

    vm["main"](*args)  # warm: the first run allocates the VM's storage
    vm.set_instrument(instrument)
    try:
        vm["main"](*args)
    finally:
        vm.set_instrument(None)
    return calls, first_args


def _kernel_module(executable, names: list[str]):
    """The module of the compiled kernels (the executable's "library" import)."""
    for module in executable.imports:
        if all(module.implements_function(name) for name in names):
            return module
    raise RuntimeError("the executable imports no module with all of its kernels")


def _median_seconds(module, name: str, device, args, protocol: MeasureProtocol) -> float:
    for _ in range(protocol.warmup):
        module[name](*args)
    timer = module.time_evaluator(name, device, number=protocol.number, repeat=protocol.repeat,
                                  min_repeat_ms=protocol.min_repeat_ms)
    return float(np.median(timer(*args).results))


def summarize(functions: dict[str, tuple[float, float | None]], *, runs: int, source: str) -> dict:
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
    return {"source": source, "runs": runs, "sum_ms": total,
            "kinds": sorted(kinds.values(), key=lambda k: -k["ms"]), "functions": rows}
