"""Where the simulated cycles go: the priced blocks, and the cache misses of their own accesses,
attributed to the functions of the libraries they belong to (the runner's /proc/self/maps at the
phase mark, symbols from llvm-nm)."""

from __future__ import annotations

import bisect
import collections
import os
import subprocess
import tempfile
from pathlib import Path

from qfa_deploy.deploy.sim.blocks import count_phases
from qfa_deploy.deploy.sim.cost import block_cycles, llvm_tool
from qfa_deploy.deploy.sim.estimate import SimCpu, runner_argv


def function_profile(runtime: str, model_path: Path, cpu: SimCpu, *, python: list[str], env: dict,
                     rootfs: Path | None = None, runs: int = 2, shape: list[int] | None = None,
                     top: int | None = 25) -> list[dict]:
    """The ``top`` functions (None: all) by simulated cycles per inference: library, symbol, cycles (core + memory,
    as ``estimate.price`` sums them), core and memory cycles, instructions."""
    with tempfile.TemporaryDirectory(prefix="qfa-simprof-") as tmp:
        maps_file = Path(tmp) / "maps"
        argv = runner_argv(python, runtime, model_path, runs, shape)
        phases = count_phases(argv, arch=cpu.arch, qemu_cpu=cpu.qemu_cpu, rootfs=rootfs,
                              env=env | {"QFA_SIM_MAPS": str(maps_file)}, by_address=True, caches=cpu.caches)
        maps = maps_file.read_text()
    blocks, block_misses = phases[1].blocks, phases[1].block_misses
    by_code: collections.Counter = collections.Counter()
    for (_addr, code), n in blocks.items():
        by_code[code] += n
    costs, _ = block_cycles(by_code, cpu.model)
    where = _Symbolizer(maps, rootfs)
    core: collections.Counter = collections.Counter()
    memory: collections.Counter = collections.Counter()
    insns: collections.Counter = collections.Counter()
    for (addr, code), n in blocks.items():
        name = where(addr)
        core[name] += n * costs.get(code, 0.0) / runs
        memory[name] += cpu.memory_cycles(block_misses.get((addr, code), ())) / runs
        insns[name] += n * (code.count(".") + 1) / runs
    cycles = core + memory
    total = sum(cycles.values()) or 1.0
    return [{"function": name, "cycles": c, "share": c / total, "core_cycles": core[name],
             "memory_cycles": memory[name], "instructions": round(insns[name])}
            for name, c in cycles.most_common(top)]


class _Symbolizer:
    """guest address -> "library:function" from the guest's maps and each library's symbols."""

    def __init__(self, maps: str, rootfs: Path | None):
        self.rootfs = rootfs
        self.ranges = []  # (start, end, path, load base)
        bases: dict[str, int] = {}
        for line in maps.splitlines():
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5]
            bases[path] = min(bases.get(path, start - int(fields[2], 16)), start - int(fields[2], 16))
            self.ranges.append((start, end, path))
        self.ranges = sorted((s, e, p, bases[p]) for s, e, p in self.ranges)
        self.starts = [r[0] for r in self.ranges]
        self.symbols: dict[str, tuple[list[int], list[str]]] = {}

    def __call__(self, addr: int) -> str:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.ranges[i][1]:
            return "[jit or anonymous]"
        _s, _e, path, base = self.ranges[i]
        values, names = self._symbols(path)
        j = bisect.bisect_right(values, addr - base) - 1
        return f"{os.path.basename(path)}:{names[j] if j >= 0 else '?'}"

    def _symbols(self, path: str) -> tuple[list[int], list[str]]:
        if path not in self.symbols:
            local = Path(path)
            if self.rootfs is not None and (self.rootfs / path.lstrip("/")).exists():
                local = self.rootfs / path.lstrip("/")
            done = subprocess.run([llvm_tool("llvm-nm"), "--defined-only", "-n", "-C", str(local)],
                                  capture_output=True, text=True)
            if not done.stdout.strip():
                done = subprocess.run([llvm_tool("llvm-nm"), "-D", "--defined-only", "-n", "-C", str(local)],
                                      capture_output=True, text=True)
            pairs = []
            for line in done.stdout.splitlines():
                fields = line.split(maxsplit=2)
                if len(fields) == 3 and fields[1] in "tTwW":
                    pairs.append((int(fields[0], 16), fields[2]))
            self.symbols[path] = ([a for a, _ in pairs], [n[:80] for _, n in pairs])
        return self.symbols[path]
