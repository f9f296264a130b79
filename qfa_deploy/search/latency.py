"""Table latency of many genomes at once: the table's part entries gathered into arrays.

``LatencyModel(table, genome).predict(G)`` equals ``table.predict(genome.decode(g))`` for every row
(same parts, same fitted correction; ``tests/test_search.py`` checks it) without building a config
or a key per subnet. A table is for one resolution, so only genomes at that resolution are valid.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from qfa_deploy.errors import QfaError
from qfa_deploy.lut.keys import LatencyKey, block_key, head_key, spatial_sizes, stem_key
from qfa_deploy.lut.table import LatencyTable
from qfa_deploy.search.genome import BLOCK_BITS, FIRST_BITS, GenomeSpace

__all__ = ["LatencyModel"]


class LatencyModel:
    """Part latencies of ``table`` indexed by genes; NaN marks an entry the table lacks."""

    def __init__(self, table: LatencyTable, genome: GenomeSpace) -> None:
        sp = genome.space
        if table.space != sp.name:
            raise QfaError(f"latency table is for space {table.space!r}, the search is over {sp.name!r}")
        if table.resolution not in sp.resolutions:
            raise QfaError(f"latency table resolution {table.resolution} is not a resolution of {sp.name!r}")
        self.table, self.genome = table, genome
        self.resolution_index = sp.resolutions.index(table.resolution)
        _, sizes, head_size = spatial_sizes(sp, table.resolution)
        B, nK, nE = sp.num_blocks, len(sp.kernel_choices), len(sp.expand_choices)
        # The bit genes a part's key reads (``arch_keys``' order), as (gene part, count) groups.
        self._genes = {"stem": [("first_bits", FIRST_BITS)], "block": [("block_bits", BLOCK_BITS)],
                       "head": [("final_bits", 2)] + ([("mix_bits", 2)] if sp.elastic_mix else [])}
        self.stem = self._entries(stem_key(sp, table.resolution))
        self.head = self._entries(head_key(sp, head_size))
        self.blocks = np.full((B, nK, nE, self._combos("block")), np.nan)
        for b in range(B):
            for (ki, k), (ei, e) in itertools.product(enumerate(sp.kernel_choices), enumerate(sp.expand_choices)):
                self.blocks[b, ki, ei] = self._entries(block_key(sp, b, sizes[b], k, e))

    def _choices(self, kind: str) -> list[tuple[int, ...]]:
        """The bit choices of each of a ``kind`` part's bit genes, in key order."""
        g = self.genome
        return [g.choices[g.slices[name].start] for name, count in self._genes[kind] for _ in range(count)]

    def _combos(self, kind: str) -> int:
        """How many bit choices a ``kind`` part's entries hold: 1 when the table keys on no bits."""
        return int(np.prod([len(c) for c in self._choices(kind)])) if self.bits_matter else 1

    def _entries(self, key: LatencyKey) -> np.ndarray:
        """``key``'s part latency at every choice of its bit genes (mixed radix, the first gene most
        significant), NaN where the table lacks the entry; one value when the table keys on no bits."""
        table = self.table
        base = table.entries.get(str(key), np.nan)
        if not table.bits_matter:
            return np.array([base])
        choices = self._choices(key.kind)
        if not table.bit_kernels.variants(key, len(choices)):
            return np.full(self._combos(key.kind), base)
        canonical = lambda bits: replace(key, bits=table.bit_kernels.canonical(key, bits))
        return np.array([table.entries.get(str(canonical(bits)), np.nan) for bits in itertools.product(*choices)])

    @property
    def bits_matter(self) -> bool:
        return self.table.bits_matter

    def _combo(self, G: np.ndarray, kind: str) -> np.ndarray:
        """(n, parts of ``kind``): each part's index into its bit combos (0 when the table keys on none)."""
        if not self.bits_matter:
            return np.zeros((len(G), self.genome.space.num_blocks if kind == "block" else 1), dtype=np.int64)
        genes = np.concatenate([self.genome.part(G, name).reshape(len(G), -1, count)
                                for name, count in self._genes[kind]], axis=2)
        radix = np.cumprod([1] + [len(c) for c in self._choices(kind)[:0:-1]])[::-1]
        return genes @ radix

    def part_sum(self, G: np.ndarray) -> np.ndarray:
        """Sum of part latencies (ms) of every row, before the table's fitted correction."""
        G = np.asarray(G)
        g = self.genome
        res = g.part(G, "resolution")[:, 0]
        if (res != self.resolution_index).any():
            bad = g.space.resolutions[int(res[res != self.resolution_index][0])]
            raise QfaError(f"arch resolution {bad} but the table is for {self.table.resolution}")
        blocks = np.arange(g.space.num_blocks)[None, :]
        part = self.blocks[blocks, g.part(G, "kernel"), g.part(G, "expand"), self._combo(G, "block")]
        active = g.active(G)
        total = self.stem[self._combo(G, "stem")[:, 0]] + self.head[self._combo(G, "head")[:, 0]]
        total = total + np.where(active, part, 0.0).sum(1)
        if np.isnan(total).any():
            row = int(np.flatnonzero(np.isnan(total))[0])
            self._raise_missing(g.decode(G[row]))
        return total

    def predict(self, G: np.ndarray) -> np.ndarray:
        """Predicted end-to-end latency (ms) of every row: ``scale * part_sum + offset``."""
        return self.table.scale * self.part_sum(G) + self.table.offset_ms

    def _raise_missing(self, cfg) -> None:
        self.table.part_sum(cfg)  # raises the table's own one-line error naming the missing key
        raise QfaError("latency table lookup failed")  # pragma: no cover - part_sum raised

    def minimum(self) -> float:
        """Lower bound of ``predict`` over the table's resolution: per block, its cheapest entry."""
        sp = self.genome.space
        with np.errstate(invalid="ignore"):
            best = np.nanmin(self.blocks.reshape(sp.num_blocks, -1), axis=1)
        total = np.nanmin(self.stem) + np.nanmin(self.head)
        for s, _ in enumerate(sp.stages):
            stage = best[s * sp.max_depth : (s + 1) * sp.max_depth]
            total += min(stage[:d].sum() for d in sp.depth_choices)
        return float(self.table.scale * total + self.table.offset_ms)
