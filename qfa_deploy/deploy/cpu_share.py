"""How much of the CPUs a local measurement ran on went to other work meanwhile (Linux /proc).

A latency measured on a core that another process shares is not the model's: the scheduler gives
each its turn, every timed repeat stretches, and no statistic of the repeats undoes it (a CIFAR-10
table built on a core that a simulator process still held for its first minute measured those parts
at 2x). ``CpuShare`` reads the pinned CPUs' busy time from /proc/stat (steal included: time the
hypervisor gave to another machine) and this process's own CPU time from /proc/self/stat, before and
after; the difference is the share of those CPUs that went to other work. Where /proc is missing
(not Linux) it reports None.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FOREIGN_CPU_LIMIT", "CpuShare", "over_limit"]

# a measurement during which other work took more of its CPUs than this is not trusted (``lut build``
# measures it again); a few percent is the kernel's own housekeeping
FOREIGN_CPU_LIMIT = 0.05
_BUSY = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user)


def over_limit(foreign: float | None) -> bool:
    """Whether a measurement that recorded ``foreign`` (None: not known) is not to be trusted."""
    return foreign is not None and foreign > FOREIGN_CPU_LIMIT


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, or None without /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(f) for f in fields[:8]]
        busy += sum(ticks[i] for i in _BUSY)
        total += sum(ticks)
    return busy, total


def _own_jiffies() -> int | None:
    """This process's user + system clock ticks (every thread), or None without /proc."""
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


class CpuShare:
    """``with CpuShare(cpus) as share: ...`` then ``share.foreign``: the fraction of ``cpus``' time in the
    block that went to anything but this process (None where it cannot be read)."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = set(cpus) if cpus is not None else os.sched_getaffinity(0)
        self.foreign: float | None = None

    def __enter__(self) -> CpuShare:
        self._start = (_cpu_jiffies(self.cpus), _own_jiffies())
        return self

    def __exit__(self, *exc) -> None:
        (start_cpu, start_own), end_cpu, end_own = self._start, _cpu_jiffies(self.cpus), _own_jiffies()
        if None in (start_cpu, start_own, end_cpu, end_own):
            return
        busy, total = end_cpu[0] - start_cpu[0], end_cpu[1] - start_cpu[1]
        if total > 0:
            self.foreign = min(1.0, max(0.0, (busy - (end_own - start_own)) / total))
