"""Table latency of many genomes at once: the table's part entries gathered into arrays.

``LatencyModel(table, genome).predict(G)`` equals ``table.predict(genome.decode(g))`` for every row
(same parts, same fitted correction; ``tests/test_search.py`` checks it) without building a config
or a key per subnet. A table is for one resolution, so only genomes at that resolution are valid.
"""

from __future__ import annotations

import itertools

import numpy as np

from qfa_deploy.errors import QfaError
from qfa_deploy.lut.keys import block_key, head_key, spatial_sizes, stem_key
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
        nb, bm = len(sp.bit_choices), table.bits_matter
        B, nK, nE = sp.num_blocks, len(sp.kernel_choices), len(sp.expand_choices)
        self.stem = np.full(nb**FIRST_BITS if bm else 1, np.nan)
        self.head = np.full(nb**2 if bm else 1, np.nan)
        self.blocks = np.full((B, nK, nE, nb**BLOCK_BITS if bm else 1), np.nan)
        # Where each bit-agnostic key lands; one key can serve several blocks (same shapes).
        slots: dict[str, list[tuple[np.ndarray, tuple, int]]] = {}
        add = lambda key, *slot: slots.setdefault(str(key), []).append(slot)
        add(stem_key(sp, table.resolution), self.stem, (), FIRST_BITS)
        add(head_key(sp, head_size), self.head, (), 2)
        for b in range(B):
            for (ki, k), (ei, e) in itertools.product(enumerate(sp.kernel_choices), enumerate(sp.expand_choices)):
                add(block_key(sp, b, sizes[b], k, e), self.blocks, (b, ki, ei), BLOCK_BITS)
        bit_index = {str(b): i for i, b in enumerate(sp.bit_choices)}
        # One pass over the table's entries (not over every possible key: 131k of them with bits).
        for text, ms in table.entries.items():
            base, _, bits = text.partition("|b") if bm else (text, "", "")
            for array, index, n_bits in slots.get(base, ()):
                combo = 0
                if bm:
                    if len(bits) != n_bits or any(c not in bit_index for c in bits):
                        continue
                    for c in bits:
                        combo = combo * nb + bit_index[c]
                array[(*index, combo)] = ms
        # Mixed-radix weights turning a row of bit indices into its combo index.
        self._radix = lambda n: nb ** np.arange(n - 1, -1, -1)

    @property
    def bits_matter(self) -> bool:
        return self.table.bits_matter

    def _combo(self, G: np.ndarray, name: str, group: int) -> np.ndarray:
        """(n, parts): index into the bit combos of each group of ``group`` bit genes of ``name``."""
        bits = self.genome.part(G, name)
        return (bits.reshape(len(G), -1, group) @ self._radix(group)).reshape(len(G), -1)

    def part_sum(self, G: np.ndarray) -> np.ndarray:
        """Sum of part latencies (ms) of every row, before the table's fitted correction."""
        G = np.asarray(G)
        g = self.genome
        res = g.part(G, "resolution")[:, 0]
        if (res != self.resolution_index).any():
            bad = g.space.resolutions[int(res[res != self.resolution_index][0])]
            raise QfaError(f"arch resolution {bad} but the table is for {self.table.resolution}")
        n, B = len(G), g.space.num_blocks
        blocks = np.arange(B)[None, :]
        if self.bits_matter:
            stem_i = self._combo(G, "first_bits", FIRST_BITS)[:, 0]
            head_i = self._combo(G, "final_bits", 2)[:, 0]
            block_i = self._combo(G, "block_bits", BLOCK_BITS)
        else:
            stem_i = head_i = np.zeros(n, dtype=np.int64)
            block_i = np.zeros((n, B), dtype=np.int64)
        part = self.blocks[blocks, g.part(G, "kernel"), g.part(G, "expand"), block_i]
        active = g.active(G)
        total = self.stem[stem_i] + self.head[head_i] + np.where(active, part, 0.0).sum(1)
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
