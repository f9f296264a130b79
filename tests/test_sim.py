"""The ARM speed instrument (qfa_deploy.deploy.sim): block counts under qemu-user and their pricing.

A C program whose hot loop runs a known number of times between two phase marks, built for x86-64 and
aarch64, is counted under qemu: within the marked phase the loop body's executions must equal the
iteration count exactly and little else may run; llvm-mca must price the loop at a plausible
cycles-per-iteration.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from qfa_deploy.deploy.sim.blocks import count_phases
from qfa_deploy.deploy.sim.cost import CostModel, block_cycles

PROGRAM = r"""
#include <stdlib.h>
#include <unistd.h>
static void spin(long n, volatile unsigned *acc) {
    for (long i = 0; i < n; i++)
        *acc = *acc * 1664525u + 1013904223u;
}
int main(int argc, char **argv) {
    volatile unsigned acc = 1;
    spin(1000, &acc);                       /* phase 0: start-up and a warm-up */
    (void)!write(0x5157, "", 0);
    spin(atol(argv[1]), &acc);              /* phase 1: what is measured */
    (void)!write(0x5157, "", 0);
    spin(1000, &acc);                       /* phase 2: to exit */
    return 0;
}
"""

ARCHES = {
    "x86_64": ("gcc", [], CostModel("x86_64-linux-gnu", "znver4"), "max"),
    "aarch64": ("aarch64-linux-gnu-gcc", ["-static"], CostModel("aarch64-linux-gnu", "cortex-a72"), "cortex-a72"),
}


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.mark.parametrize("arch", list(ARCHES))
def test_loop_counts_are_exact_and_priced(arch, tmp_path):
    cc, flags, model, qemu_cpu = ARCHES[arch]
    _needs(cc, f"qemu-{arch}", "llvm-mca-16")
    binary = tmp_path / "loop"
    source = tmp_path / "loop.c"
    source.write_text(PROGRAM)
    subprocess.run([cc, "-O1", *flags, "-o", str(binary), str(source)], check=True)

    phases = count_phases([str(binary), "100000"], arch=arch, qemu_cpu=qemu_cpu)
    assert len(phases) == 3
    extra = phases[1].blocks
    # The loop body ran 100000 times in the phase (the first pass may enter through a block of its
    # own, after the loop's rotation by the compiler); little else ran.
    assert max(extra.values()) in (99999, 100000), sorted(extra.values())[-5:]
    assert sum(extra.values()) < 100000 * 1.01
    assert max(phases[0].blocks.values()) >= 999 and max(phases[2].blocks.values()) >= 999
    costs, coverage = block_cycles(extra, model)
    assert coverage > 0.99
    loop = max(extra, key=extra.get)
    # A multiply-add through a volatile (a load, a multiply, an add, a store, a compare-and-branch):
    # a few cycles per iteration on any of these cores, never less than one or more than fifty.
    assert 1.0 <= costs[loop] <= 50.0, costs[loop]


def test_rep_string_ops_are_priced_per_byte():
    """qemu counts an x86 ``rep stosb`` once per byte; the pricing must charge a fraction of a cycle."""
    _needs("llvm-mca-16")
    stosb = "f3aa"  # rep stosb
    costs, _ = block_cycles({stosb: 4096}, CostModel("x86_64-linux-gnu", "znver4"))
    assert costs[stosb] < 0.1


STREAM = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]), sum = 0;
    volatile char *buf = calloc(n, 1);
    for (long i = 0; i < n; i += 64) sum += buf[i];  /* phase 0: first touch */
    (void)!write(0x5157, "", 0);
    for (int r = 0; r < 4; r++)                         /* phase 1: four more passes */
        for (long i = 0; i < n; i += 64) sum += buf[i];
    (void)!write(0x5157, "", 0);
    return (int)(sum & 1);
}
"""


@pytest.mark.parametrize("size,l1_misses,l2_misses", [
    (16 << 10, 0, 0),  # fits the 32 KB L1: the passes hit
    (256 << 10, 4 * 4096, 0),  # fits the 1 MB L2 only: every line misses L1 on each pass (LRU)
    (4 << 20, 4 * 65536, 4 * 65536),  # fits neither
])
def test_cache_model_counts_misses_of_a_stream(size, l1_misses, l2_misses, tmp_path):
    _needs("gcc", "qemu-x86_64")
    source, binary = tmp_path / "stream.c", tmp_path / "stream"
    source.write_text(STREAM)
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(source)], check=True)
    phases = count_phases([str(binary), str(size)], arch="x86_64", qemu_cpu="max",
                          caches=((32 << 10, 8), (1 << 20, 16)))
    measured = phases[1]
    # a handful of the loop's own stack and code-adjacent accesses may miss too
    assert abs(measured.misses[0] - l1_misses) <= 8, measured
    assert abs(measured.misses[1] - l2_misses) <= 8, measured
    assert measured.accesses >= 4 * size // 64
    # every miss is charged to the block whose access missed: the blocks' misses add up to the phase's,
    # and the stream's loop holds nearly all of them
    per_block = np.array(list(measured.block_misses.values())).sum(axis=0)
    np.testing.assert_array_equal(per_block, measured.misses)
    loop = max(measured.block_misses.values(), key=lambda m: m[0])
    assert loop[0] >= l1_misses - 8 and loop[1] >= l2_misses - 8, measured.block_misses


def _encode(triple: str, assembly: list[str]) -> str:
    """A block's code as the plugin records it: each instruction's bytes in hex, '.'-separated."""
    done = subprocess.run(["llvm-mc-16", f"-triple={triple}", "--show-encoding"], input="\n".join(assembly) + "\n",
                          capture_output=True, text=True, check=True)
    encodings = [line.split("encoding: [")[1].split("]")[0] for line in done.stdout.splitlines() if "encoding:" in line]
    return ".".join("".join(byte[2:] for byte in enc.split(",")) for enc in encodings)


@pytest.mark.parametrize("arch", list(ARCHES))
def test_only_a_loop_body_pays_its_chain_back_to_back(arch):
    """A 24-multiply dependent chain through one register: as a loop body (branching to its own start)
    each run waits for the last, so it costs the chain's latency; as the end of a larger loop (a tile's
    epilogue, branching further back) the program re-initializes the register in between and the
    out-of-order window hides part of the chain, so it must cost less, and no less than its issue."""
    _needs("llvm-mca-16", "llvm-mc-16")
    _, _, model, _ = ARCHES[arch]
    if arch == "aarch64":
        chain = ["fmul v0.4s, v0.4s, v1.4s"] * 24 + ["subs x0, x0, #1"]
        loop, tile_end = (_encode(model.triple, [*chain, f"b.ne #{offset}"]) for offset in (-4 * 25, -4 * 60))
    else:
        chain = ["vmulps %ymm1, %ymm0, %ymm0"] * 24 + ["decq %rax"]
        body = _encode(model.triple, chain)
        size = sum(len(insn) // 2 for insn in body.split(".")) + 2  # and a 2-byte jne
        loop, tile_end = (f"{body}.75{(256 - size - extra) % 256:02x}" for extra in (0, 40))
    costs, _ = block_cycles({loop: 1000, tile_end: 1000}, model)
    assert costs[loop] >= 24 * 3, costs  # each multiply waits for the one before: 3+ cycles of latency
    assert 24 / 2 <= costs[tile_end] <= costs[loop] - model.reorder_window / 2, costs
