"""Cycles of one inference on a CPU model: the runner, under qemu with the bbcount plugin, warms up
and then marks a phase around a few inferences; that phase's block counts, priced by llvm-mca, summed.

Start-up (interpreter, imports, model load, first-run allocations) falls outside the phase, so the
same procedure serves a compiled TVM library, onnxruntime and LiteRT alike.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from qfa_deploy.deploy.sim.blocks import Phase, count_phases
from qfa_deploy.deploy.sim.cost import CostModel, block_cycles
from qfa_deploy.errors import QfaError

INFER_MAIN = Path(__file__).with_name("infer_main.py")
RPC_SITE = Path(__file__).parents[1] / "_rpc_site"  # hides torch: the runner never needs it


# The share of a cache miss's latency an inference waits for: out-of-order execution and the
# hardware prefetchers hide the rest (streaming tensors are prefetched well). One number for every
# CPU, set on this host's x86 measurements (docs/simulation.md), not per ARM core.
MISS_EXPOSURE = 0.25
SIM_VERSION = 3  # bumped when what an estimate means changes (2: the cache model; 3: blocks priced in context)


@dataclass(frozen=True)
class SimCpu:
    """A CPU the simulator models: how to emulate its ISA, how llvm-mca prices it, its data caches."""

    name: str
    arch: str  # qemu-<arch>
    qemu_cpu: str
    model: CostModel
    ghz: float  # nominal clock, only to print ms beside cycles
    note: str
    caches: tuple[tuple[int, int], ...]  # (bytes, ways) of L1D, L2(, L3), 64-byte lines
    miss_cycles: tuple[float, ...]  # load-to-use latency of the next level when a level misses

    def memory_cycles(self, misses, exposure: float = MISS_EXPOSURE) -> float:
        """Cycles waited on ``misses`` (per cache level) of which ``exposure`` is not hidden."""
        return exposure * sum(m * c for m, c in zip(misses, self.miss_cycles, strict=False))


CPUS = {
    cpu.name: cpu
    for cpu in (
        # BCM2711: 32 KB 2-way L1D, 1 MB 16-way shared L2, LPDDR4 (~120 ns)
        # reorder windows (CostModel.reorder_window): reorder-buffer entries / dispatch width, A72 128 / 3,
        # A76 128 / 4, Zen 4 320 / 6
        SimCpu("cortex-a72", "aarch64", "cortex-a72", CostModel("aarch64-linux-gnu", "cortex-a72", "", 128 / 3), 1.8,
               "Raspberry Pi 4 (ARMv8.0-A, NEON); LLVM's Cortex-A57-family scheduling model",
               ((32 << 10, 2), (1 << 20, 16)), (18.0, 216.0)),
        # BCM2712: 64 KB 4-way L1D, 512 KB 8-way private L2, 2 MB 16-way L3, LPDDR4X (~100 ns)
        SimCpu("cortex-a76", "aarch64", "cortex-a76",
               CostModel("aarch64-linux-gnu", "cortex-a76", "+dotprod", 128 / 4), 2.4,
               "Raspberry Pi 5 (ARMv8.2-A, NEON + dot product); LLVM <= 16 prices it with the same "
               "Cortex-A57-family model as the A72, so only its instructions and caches differ, not its pipeline",
               ((64 << 10, 4), (512 << 10, 8), (2 << 20, 16)), (11.0, 40.0, 240.0)),
        # this host: 32 KB 8-way L1D, 1 MB 8-way L2, 32 MB 16-way L3 (one CCX), DDR5 (~110 ns)
        SimCpu("znver4", "x86_64", "max", CostModel("x86_64-linux-gnu", "znver4", "", 320 / 6), 3.7,
               "this host's x86 (AMD Zen 4, 3.7 GHz nominal) for validation, which compares ratios; qemu runs "
               "AVX2 code only (no AVX-512 in TCG)",
               ((32 << 10, 8), (1 << 20, 8), (32 << 20, 16)), (14.0, 50.0, 380.0)),
    )
}


@dataclass(frozen=True)
class Estimate:
    cycles: float  # one inference: core_cycles + memory_cycles
    instructions: int
    coverage: float  # share of the instructions priced block by block
    blocks: int
    core_cycles: float = 0.0  # llvm-mca, every access an L1 hit
    memory_cycles: float = 0.0  # the cache model's misses x latency x MISS_EXPOSURE
    misses: tuple[float, ...] = ()  # per inference, per level

    def ms(self, ghz: float) -> float | None:
        return self.cycles / (ghz * 1e6) if ghz else None

    def to_dict(self) -> dict:
        return asdict(self)


def simulate(runtime: str, model_path: Path, cpu: SimCpu, *, python: list[str], env: dict,
             rootfs: Path | None = None, runs: int = 2, shape: list[int] | None = None,
             timeout: float = 7200) -> Estimate:
    """Cycles of one ``runtime`` inference of ``model_path`` on ``cpu``.

    ``python`` is the argv of an interpreter for ``cpu.arch`` (its path inside ``rootfs`` for a
    foreign one) that can import the runtime. The runner warms up with one inference, then marks a
    phase around ``runs`` more: only that phase is priced.
    """
    argv = runner_argv(python, runtime, model_path, runs, shape)
    phases = count_phases(argv, arch=cpu.arch, qemu_cpu=cpu.qemu_cpu, rootfs=rootfs, env=env, timeout=timeout,
                          caches=cpu.caches)
    if len(phases) != 3:
        raise QfaError(f"the runner marked {len(phases) - 1} phase boundaries, not 2")
    return price(phases[1], cpu, runs)


def runner_argv(python: list[str], runtime: str, model_path: Path, runs: int, shape: list[int] | None) -> list[str]:
    """The runner warming up once, then ``runs`` inferences between two phase marks."""
    argv = [*python, str(INFER_MAIN), runtime, str(model_path), str(runs), "--phases"]
    return argv + ["--shape", ",".join(map(str, shape))] if shape else argv


def price(phase: Phase, cpu: SimCpu, inferences: int = 1) -> Estimate:
    """Cycles of ``phase`` on ``cpu``, per inference: its blocks priced, plus its cache misses."""
    blocks = phase.blocks
    costs, coverage = block_cycles(blocks, cpu.model)
    priced_insns = sum(blocks[code] * (code.count(".") + 1) for code in costs)
    priced_cycles = sum(blocks[code] * cycles for code, cycles in costs.items())
    instructions = sum(n * (code.count(".") + 1) for code, n in blocks.items())
    # The unpriced tail (coverage < 1) at the priced blocks' cycles per instruction.
    core = priced_cycles * instructions / max(priced_insns, 1) / inferences
    misses = tuple(m / inferences for m in phase.misses)
    memory = cpu.memory_cycles(misses)
    return Estimate(core + memory, round(instructions / inferences), coverage, len(costs), core, memory, misses)


def simulation_provenance(cpu_name: str) -> dict:
    """What a simulated figure is, for a table's provenance: the CPU model and the tools' versions."""
    from qfa_deploy.deploy.sim.cost import ITERATIONS, llvm_tool

    cpu = CPUS[cpu_name]
    return {"instrument": "qemu-user block counts x llvm-mca steady-state cycles + data-cache misses "
            "(qfa_deploy.deploy.sim)", "sim_version": SIM_VERSION, "miss_exposure": MISS_EXPOSURE,
            "caches": [list(c) for c in cpu.caches], "miss_cycles": list(cpu.miss_cycles), "cpu": cpu.name,
            "llvm_mcpu": cpu.model.mcpu, "llvm_mattr": cpu.model.mattr, "reorder_window": cpu.model.reorder_window,
            "llvm_mca": Path(llvm_tool("llvm-mca")).name, "mca_iterations": ITERATIONS,
            "qemu_cpu": cpu.qemu_cpu, "nominal_ghz": cpu.ghz, "note": cpu.note}


def host_python_env(extra_path: str | None = None) -> tuple[list[str], dict]:
    """This interpreter (for qemu-x86_64 validation runs and native timing) and its runner environment."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(RPC_SITE), extra_path, env.get("PYTHONPATH")) if p)
    # The venv's own python path (not the resolved binary): resolving it would leave the venv.
    return [str(Path(sys.prefix) / "bin" / "python")], env
