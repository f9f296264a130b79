"""Which bits a latency table keys on: the 1x1 convs whose kernel on the table's target follows their bits.

On most targets a conv's bits only change its clamp bounds, and a table's keys hold no bits. Where a
schedule runs some 1x1 convs on a kernel of its own at few bits (``TargetSchedule.bit_kernel``: the
Pi 4's bit planes, W2A2 from ~120 input channels), the table records those convs as
``bit_kernels``, (input channels, weight bits, code bits) triples, and a part's key carries bits
exactly where one of its 1x1 convs is such a triple: its *canonical* bits, that conv's pair as given
and every other conv's at the space's highest bits (their kernels are those of the highest bits). A
part whose convs all run their highest-bit kernels keeps the key without bits, so one entry serves
every bit choice that runs the same kernels: a few extra parts to measure, not 3^6 per block.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from qfa_deploy.lut.keys import LatencyKey  # keys.py knows nothing of this module: arch_keys takes canonical

__all__ = ["BitKernels", "pointwise_convs"]


def pointwise_convs(key: LatencyKey, n_bits: int) -> list[tuple[int, int, int]]:
    """The 1x1 convs of a part as (input channels, index of their weight bits, index of their code bits)
    in the part's bits tuple (``keys.arch_keys``' order, ``n_bits`` long)."""
    if key.kind == "block":  # (w expand, w depthwise, w project, a expand, a depthwise, a project)
        return [(key.in_ch, 0, 3), (key.mid_ch, 2, 5)]
    if key.kind == "stem":  # stem conv and first block: (w depthwise, w project, a depthwise, a project)
        return [(key.mid_ch, 1, 3)]
    # head: (final expand w, a[, feature mix w, a]); the classifier's bits are fixed
    return [(key.in_ch, 0, 1)] + ([(key.mid_ch, 2, 3)] if n_bits == 4 else [])


@dataclass(frozen=True)
class BitKernels:
    """The (input channels, weight bits, code bits) of the 1x1 convs with kernels of their own."""

    triples: frozenset[tuple[int, int, int]]
    top: int  # the space's highest bits: the kernels every other conv runs

    def __bool__(self) -> bool:
        return bool(self.triples)

    @classmethod
    def of_schedule(cls, rule: Callable[[int, int, int], bool] | None, keys: Iterable[LatencyKey],
                    bit_choices: Iterable[int]) -> BitKernels:
        """The triples a schedule's ``bit_kernel`` rule picks among the 1x1 convs of ``keys`` (bit-agnostic
        parts) at every pair of ``bit_choices`` but the highest."""
        choices = sorted(bit_choices)
        top = choices[-1]
        channels = {ch for k in keys for ch, _, _ in pointwise_convs(k, 4)}  # 4: a head's feature mix included
        pairs = [(w, a) for w, a in itertools.product(choices, repeat=2) if (w, a) != (top, top)]
        triples = {(ch, w, a) for ch in channels for w, a in pairs if rule is not None and rule(ch, w, a)}
        return cls(frozenset(triples), top)

    def canonical(self, key: LatencyKey, bits: tuple[int, ...]) -> tuple[int, ...]:
        """The bits ``key``'s part is keyed on at ``bits``: () when all of its convs run their highest-bit
        kernels, else ``bits`` with every conv but those with kernels of their own at the highest bits."""
        out, own = [self.top] * len(bits), False
        for channels, w, a in pointwise_convs(key, len(bits)):
            if (channels, bits[w], bits[a]) in self.triples:
                out[w], out[a], own = bits[w], bits[a], True
        return tuple(out) if own else ()

    def variants(self, key: LatencyKey, n_bits: int) -> list[LatencyKey]:
        """``key`` with every canonical bits tuple but () that a bit choice of its part gives: each of its
        1x1 convs at its highest bits or at one of its own pairs."""
        convs = pointwise_convs(key, n_bits)
        options = [[None, *sorted((w, a) for ch, w, a in self.triples if ch == channels)] for channels, _, _ in convs]
        out = set()
        for choice in itertools.product(*options):
            bits = [self.top] * n_bits
            for (_, w, a), pair in zip(convs, choice, strict=True):
                if pair is not None:
                    bits[w], bits[a] = pair
            if canon := self.canonical(key, tuple(bits)):
                out.add(replace(key, bits=canon))
        return sorted(out)

    def to_list(self) -> list[list[int]]:
        return [list(t) for t in sorted(self.triples)]
