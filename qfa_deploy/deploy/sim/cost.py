"""Steady-state cycles of each block on a CPU model: LLVM's disassembler, then llvm-mca.

A block that branches back to its own start is a loop body: its cost is llvm-mca's total cycles for
``ITERATIONS`` back-to-back runs of it, divided by ``ITERATIONS`` (its steady state, loop-carried
dependencies included). Any other block runs between other blocks, and repeating it back to back
would chain each run's results into the next one's inputs (a tile's epilogue re-reading accumulator
registers it overwrote: 148 cycles a run for 60 instructions) where the program re-initializes them
in between. Such a block costs the larger of its resource bound (llvm-mca's block reciprocal
throughput: issue width and pipes) and what remains of its single-run latency once the out-of-order
window has filled with the work that follows (``CostModel.reorder_window``), and never more than the
back-to-back price. Memory is modelled as hitting L1 (llvm-mca has no caches; ``estimate`` adds a
cache model); the instrument is validated against measured x86 times before its ARM figures are read.
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
PRICING_VERSION = 2  # 2: blocks that are not loop bodies priced in context (module docstring)
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
    # Cycles of following work the core dispatches while a block's dependency chain drains: its
    # reorder buffer over its dispatch width (the core's own figures, not LLVM's model of it).
    reorder_window: float = 40.0

    @property
    def key(self) -> str:
        window = f"-w{self.reorder_window:g}"
        return f"{self.triple}-{self.mcpu}{self.mattr}-llvm{_llvm_version()}-p{PRICING_VERSION}{window}"


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
    looped = _mca("\n".join(regions) + "\n", model, ITERATIONS)
    priced = {code: looped[f"b{i}"]["TotalCycles"] / ITERATIONS for i, code in enumerate(blocks)}
    between = [i for i, code in enumerate(blocks) if not is_loop_body(code, text, model.triple)]
    if between:  # one run each of the blocks that are not loop bodies, priced in context
        single = _mca("\n".join(regions[i] for i in between) + "\n", model, 1)
        for i in between:
            alone = single[f"b{i}"]
            in_context = max(alone["BlockRThroughput"], alone["TotalCycles"] - model.reorder_window)
            priced[blocks[i]] = min(priced[blocks[i]], in_context)
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


def is_loop_body(code: str, text: dict[str, str], triple: str) -> bool:
    """Whether the block ``code`` (its instructions' hex, '.'-separated) ends in a branch back to its
    own first instruction. ``text``: each instruction's assembly (``_disassemble``). The branch's
    offset is relative to the branch itself on aarch64 and to the end of it on x86."""
    insns = code.split(".")
    last_lines = text.get(insns[-1], "").splitlines()
    match = _BRANCH_OFFSET.search(last_lines[-1]) if last_lines else None
    if match is None:
        return False
    offset = int(match.group(1))
    if triple.startswith("aarch64"):
        return offset == -4 * (len(insns) - 1)
    return offset == -sum(len(insn) // 2 for insn in insns)


# The last operand of a direct branch as llvm-mc prints it: aarch64 "b.ne #-116", "cbnz x0, #-12",
# "tbnz w0, #3, #-32"; x86 "jne -118", "jmp -2".
_BRANCH_OFFSET = re.compile(r"^(?:b(?:\.\w+)?|cbn?z|tbn?z|j[a-z]+|loop\w*)\s+(?:.*,\s*)?#?(-?\d+)$")


def _mca(source: str, model: CostModel, iterations: int) -> dict[str, dict]:
    """{region: llvm-mca's summary (TotalCycles, BlockRThroughput, ...)} for ``iterations`` back-to-back
    runs of each region; instructions the CPU model cannot schedule become nops."""
    dropped: set[str] = set()
    for _ in range(10000):
        done = subprocess.run([llvm_tool("llvm-mca"), f"-mtriple={model.triple}", f"-mcpu={model.mcpu}",
                               *([f"-mattr={model.mattr}"] if model.mattr else []),
                               f"-iterations={iterations}", "--json", "-"],
                              input=source, capture_output=True, text=True)
        match = _UNSUPPORTED.search(done.stderr)
        if done.returncode == 0:
            return {r["Name"]: r["SummaryView"] for r in json.loads(done.stdout)["CodeRegions"]}
        if match is None or match.group(1).strip() in dropped:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise QfaError(f"llvm-mca -mcpu={model.mcpu} failed: {tail}")
        bad = match.group(1).strip()
        dropped.add(bad)
        source = "\n".join("nop" if line.strip() == bad else line for line in source.splitlines())
    raise QfaError(f"llvm-mca -mcpu={model.mcpu}: too many unsupported instructions")
