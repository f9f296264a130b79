"""Steady-state cycles of each block on a CPU model: LLVM's disassembler, then llvm-mca.

A block's cost is llvm-mca's total cycles for ``ITERATIONS`` back-to-back runs of it, divided by
``ITERATIONS``: the throughput of a hot loop body, which is what inference time is made of. Memory
is modelled as hitting L1 (llvm-mca has no caches); that is the instrument's main blind spot, and why
it is validated against measured x86 times before its ARM figures are read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.deploy.sim.blocks import cache_dir
from qfa_deploy.errors import QfaError

ITERATIONS = 50
LLVM_VERSIONS = ("16", "15", "14")
# Of all executed instructions, price exactly the blocks that cover this share; the rest are
# charged the cycles per instruction of the priced ones (their share is reported as coverage).
COVERAGE = 0.999


@dataclass(frozen=True)
class CostModel:
    """One CPU as llvm-mca sees it."""

    triple: str  # x86_64-linux-gnu, aarch64-linux-gnu
    mcpu: str  # znver4, cortex-a72, ...
    mattr: str = ""  # e.g. +dotprod

    @property
    def key(self) -> str:
        return f"{self.triple}-{self.mcpu}{self.mattr}-llvm{_llvm_version()}"


def llvm_tool(name: str) -> str:
    for version in LLVM_VERSIONS:
        path = shutil.which(f"{name}-{version}")
        if path:
            return path
    path = shutil.which(name)
    if path is None:
        raise QfaError(f"{name} not found: install Debian's llvm-16 (apt-get install llvm-16)")
    return path


def _llvm_version() -> str:
    return Path(llvm_tool("llvm-mca")).name.rpartition("-")[2] or "unversioned"


def block_cycles(blocks: dict[str, int], model: CostModel) -> tuple[dict[str, float], float]:
    """({block: cycles per execution} for the hot blocks, coverage = their share of instructions)."""
    weight = {code: n * (code.count(".") + 1) for code, n in blocks.items()}
    total = sum(weight.values()) or 1
    hot, covered = [], 0
    for code in sorted(weight, key=weight.get, reverse=True):
        if covered >= COVERAGE * total:
            break
        hot.append(code)
        covered += weight[code]
    cache_file = cache_dir() / f"costs-{model.key}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    missing = [code for code in hot if code not in cache]
    if missing:
        cache.update(_price(missing, model))
        atomic_write_bytes(cache_file, lambda f: f.write(json.dumps(cache).encode()))
    return {code: cache[code] for code in hot}, covered / total


def _price(blocks: list[str], model: CostModel) -> dict[str, float]:
    text = _disassemble({insn for code in blocks for insn in code.split(".")}, model)
    regions = []
    for i, code in enumerate(blocks):
        body = "\n".join(text.get(insn, "nop") for insn in code.split("."))
        regions.append(f"# LLVM-MCA-BEGIN b{i}\n{body}\n# LLVM-MCA-END b{i}")
    cycles = _mca("\n".join(regions) + "\n", model)
    priced = {code: cycles[f"b{i}"] for i, code in enumerate(blocks)}
    for code in blocks:
        string_op = _REP_STRING.fullmatch(text.get(code, ""))
        if string_op:
            priced[code] = _STRING_BYTES[string_op.group(1)] / REP_BYTES_PER_CYCLE
    return priced


# qemu runs an x86 ``rep movs/stos`` as one block per element, so such a block's count is the
# number of elements (bytes for movsb). llvm-mca would price each as a whole microcoded string
# instruction (~100 cycles); fast-string hardware moves about a cache line per cycle instead.
REP_BYTES_PER_CYCLE = 32
_REP_STRING = re.compile(r"rep\s+(?:movs|stos)([bwlq])\b.*", re.S)
_STRING_BYTES = {"b": 1, "w": 2, "l": 4, "q": 8}


# After every instruction, one that compiled code hardly holds (x86 ud2, arm64 brk #0x7a7a): llvm-mc
# prints some instructions on two lines (prefixes) and skips what it cannot decode, so the markers,
# not line counts, delimit each instruction's text.
COMMENTS = {"x86_64": "#", "aarch64": "//"}
MARKERS = {"x86_64": "0f0b", "aarch64": (0xD4200000 | 0x7A7A << 5).to_bytes(4, "little").hex()}


def _disassemble(insns: set[str], model: CostModel) -> dict[str, str]:
    """{instruction hex: assembly}; what LLVM cannot decode is left out (priced as a nop).

    (qemu 7.2 hands plugins a few x86 instructions cut short: those are among the undecodable.)
    """
    marker = MARKERS[model.triple.split("-")[0]]
    order = sorted(insns - {marker})

    def group(h: str) -> str:
        return "[" + " ".join(f"0x{h[k:k + 2]}" for k in range(0, len(h), 2)) + "]"

    source = "\n".join(f"{group(h)}\n{group(marker)}" for h in order)
    done = subprocess.run([llvm_tool("llvm-mc"), "--disassemble", f"-triple={model.triple}",
                           *([f"-mattr={model.mattr}"] if model.mattr else [])],
                          input=f"{group(marker)}\n{source}", capture_output=True, text=True)
    comment = COMMENTS[model.triple.split("-")[0]]  # aarch64 immediates start with '#'
    lines = [line.split(comment)[0].strip() for line in done.stdout.splitlines()
             if line.startswith("\t") and not line.strip().startswith(".")]
    marker_text, rest = lines[0], lines[1:]
    text, current = {marker: marker_text}, []
    pending = iter(order)
    for line in rest:
        if line != marker_text:
            current.append(line)
            continue
        insn = next(pending, None)
        if insn is None:
            raise QfaError("llvm-mc printed more instructions than it was given")
        if current:
            text[insn] = "\n".join(current)
        current = []
    return text


_UNSUPPORTED = re.compile(r"note: instruction:\s*(.+)")


def _mca(source: str, model: CostModel) -> dict[str, float]:
    """{region: cycles per iteration}; instructions the CPU model cannot schedule become nops."""
    dropped: set[str] = set()
    for _ in range(10000):
        done = subprocess.run([llvm_tool("llvm-mca"), f"-mtriple={model.triple}", f"-mcpu={model.mcpu}",
                               *([f"-mattr={model.mattr}"] if model.mattr else []),
                               f"-iterations={ITERATIONS}", "--json", "-"],
                              input=source, capture_output=True, text=True)
        match = _UNSUPPORTED.search(done.stderr)
        if done.returncode == 0:
            regions = json.loads(done.stdout)["CodeRegions"]
            return {r["Name"]: r["SummaryView"]["TotalCycles"] / ITERATIONS for r in regions}
        if match is None or match.group(1).strip() in dropped:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise QfaError(f"llvm-mca -mcpu={model.mcpu} failed: {tail}")
        bad = match.group(1).strip()
        dropped.add(bad)
        source = "\n".join("nop" if line.strip() == bad else line for line in source.splitlines())
    raise QfaError(f"llvm-mca -mcpu={model.mcpu}: too many unsupported instructions")
