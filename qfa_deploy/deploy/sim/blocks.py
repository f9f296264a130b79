"""How often each basic block of a program ran: the program under qemu-user with the bbcount plugin.

Blocks are keyed by their instruction bytes (hex, one group per instruction), not their address:
a block's cost depends only on its code, and the same code at two addresses (two loads of one
library) is the same block to price.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import cache_root

PLUGIN_SOURCE = Path(__file__).with_name("bbcount.c")


def cache_dir() -> Path:
    return cache_root() / "sim"


def plugin() -> Path:
    """The compiled plugin, built once per source version with the host C compiler."""
    source = PLUGIN_SOURCE.read_bytes()
    path = cache_dir() / f"bbcount-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if path.is_file():
        return path
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise QfaError("the simulator needs a C compiler (cc or gcc) to build its qemu plugin")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / "bbcount.so"
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(built), str(PLUGIN_SOURCE)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise QfaError(f"building the qemu plugin failed: {done.stderr.strip().splitlines()[-1:]}")
        atomic_write_bytes(path, lambda f: f.write(built.read_bytes()))
    return path




MARK_FD = 0x5157  # bbcount.c: write(MARK_FD, "", 0) ends a phase


@dataclass(frozen=True)
class Phase:
    """What ran between two phase marks: block executions, data accesses and misses per cache level."""

    blocks: collections.Counter  # block hex (or (address, hex)) -> executions
    accesses: int = 0
    misses: tuple[int, ...] = ()  # L1, L2, L3 (0 where the level is absent or caches are off)
    block_misses: dict = field(default_factory=dict)  # block key -> its own accesses' misses (caches on)


def count_phases(argv: list[str], *, arch: str, qemu_cpu: str, rootfs: Path | None = None,
                 env: dict | None = None, timeout: float = 3600, by_address: bool = False,
                 caches: tuple[tuple[int, int], ...] = ()) -> list[Phase]:
    """Each phase of ``argv`` run under ``qemu-<arch> -cpu <qemu_cpu>``: phase 0 runs up to the
    program's first phase mark, the last from its last mark to exit. With ``by_address`` the block
    keys are (guest address, block hex); ``caches`` ((bytes, ways) per level) turns the cache model on."""
    qemu = shutil.which(f"qemu-{arch}")
    if qemu is None:
        raise QfaError(f"qemu-{arch} not found: install Debian's qemu-user")
    with tempfile.TemporaryDirectory(prefix="qfa-bbcount-") as tmp:
        out = Path(tmp) / "blocks.txt"
        options = f"{plugin()},out={out}"
        if caches:
            options += ",cache=" + ":".join(f"{size}:{ways}" for size, ways in caches)
        command = [qemu, "-cpu", qemu_cpu, "-plugin", options]
        if rootfs is not None:
            command += ["-L", str(rootfs)]
        try:
            done = subprocess.run([*command, *argv], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QfaError(f"the emulated run took longer than {timeout:.0f} s: {' '.join(argv[:3])} ...") from None
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise QfaError(f"the emulated run failed (exit {done.returncode}): {tail}")
        return _read_phases(out, by_address, len(caches))


def _read_phases(path: Path, by_address: bool, levels: int) -> list[Phase]:
    """The plugin's output: per phase its header and block lines (with per-block misses if ``levels``)."""
    headers, phases = [], []
    with open(path) as lines:
        for line in lines:
            if line.startswith("# phase"):
                headers.append([int(v) for v in line.split()[3:]])
                phases.append((collections.Counter(), {}))
                continue
            vaddr, count, rest = line.split(" ", 2)
            misses = None
            if levels:
                missed, rest = rest.split(" ", 1)
                misses = [int(m) for m in missed.split(",")][:levels]
            key = (int(vaddr, 16), rest.strip()) if by_address else rest.strip()
            blocks, block_misses = phases[-1]
            blocks[key] += int(count)
            if misses is not None:
                block_misses[key] = [a + b for a, b in zip(block_misses.get(key, [0] * levels), misses, strict=True)]
    return [Phase(b, h[0] if h else 0, tuple(h[1:1 + levels]), m) for (b, m), h in zip(phases, headers, strict=True)]
