"""Analytic MACs and BitOPs of many genomes at once, from per-choice costs computed once.

The counts follow ``qfa_deploy.metrics`` exactly (a conv costs ``out_ch * H_out * W_out *
in_ch/groups * k^2`` MACs with its full kernel; BitOPs are ``MACs * w_bits * a_bits / 64`` per
quantized conv, float squeeze-excite convs at 32 x 32, the fixed stem / feature-mix / classifier at
the space's fixed bits, the feature mix at its chosen bits where the space has them).
``tests/test_search.py`` checks equality with ``metrics.subnet_cost``.
BitOPs are accumulated as integers (``64 * BitOPs``) so the sum is exact.
"""

from __future__ import annotations

import numpy as np

from qfa_deploy.lut.keys import spatial_sizes
from qfa_deploy.nn.supernet import block_channels
from qfa_deploy.search.genome import BLOCK_BITS, GenomeSpace
from qfa_deploy.space import make_divisible

__all__ = ["CostModel"]

FLOAT_BITS = 32


def _down(size: int, stride: int) -> int:
    return -(-size // stride)


class CostModel:
    """MACs / BitOPs of genomes of ``genome.space`` (vectorised over rows)."""

    def __init__(self, genome: GenomeSpace) -> None:
        self.genome = genome
        sp = genome.space
        R, B = len(sp.resolutions), sp.num_blocks
        nK, nE = len(sp.kernel_choices), len(sp.expand_choices)
        c0, fixed = sp.stem_width, sp.fixed_bits**2
        self.stem = np.zeros(R, dtype=np.int64)  # at fixed bits
        self.first_dw = np.zeros(R, dtype=np.int64)
        self.first_pw = np.zeros(R, dtype=np.int64)
        self.expand = np.zeros((R, B, nE), dtype=np.int64)
        self.dw = np.zeros((R, B, nE, nK), dtype=np.int64)
        self.project = np.zeros((R, B, nE), dtype=np.int64)
        self.se = np.zeros((B, nE), dtype=np.int64)  # float, independent of resolution
        self.final = np.zeros(R, dtype=np.int64)
        for r, res in enumerate(sp.resolutions):
            _, sizes, head = spatial_sizes(sp, res)
            s0 = _down(res, sp.stem_stride)
            self.stem[r] = s0 * s0 * c0 * 3 * 9
            self.first_dw[r] = s0 * s0 * c0 * 9
            self.first_pw[r] = s0 * s0 * c0 * c0
            for b in range(B):
                use_se = sp.stages[sp.block_stage(b)].use_se
                for ei, e in enumerate(sp.expand_choices):
                    in_ch, mid, out_ch, stride = block_channels(sp, b, e)
                    size, out = sizes[b], _down(sizes[b], stride)
                    self.expand[r, b, ei] = size * size * mid * in_ch
                    self.project[r, b, ei] = out * out * out_ch * mid
                    for ki, k in enumerate(sp.kernel_choices):
                        self.dw[r, b, ei, ki] = out * out * mid * k * k
                    if use_se:
                        self.se[b, ei] = 2 * mid * make_divisible(mid // 4)
            self.final[r] = head * head * sp.stages[-1].width * sp.final_expand_width
        # Pooled 1x1 feature mix and classifier: independent of everything but the mix bits.
        self.mix = sp.final_expand_width * sp.feature_mix_width
        self.fixed_head = self.mix + sp.feature_mix_width * sp.num_classes
        self.fixed_bits_product = fixed

    def _block_parts(self, G: np.ndarray):
        g = self.genome
        r = g.part(G, "resolution")[:, 0]
        e, k = g.part(G, "expand"), g.part(G, "kernel")
        blocks = np.arange(g.space.num_blocks)[None, :]
        rr = r[:, None]
        active = g.active(G)
        parts = (self.expand[rr, blocks, e], self.dw[rr, blocks, e, k], self.project[rr, blocks, e])
        return r, active, parts, self.se[blocks, e]

    def macs(self, G: np.ndarray) -> np.ndarray:
        """Multiply-accumulates of every genome (int64)."""
        G = np.asarray(G)
        r, active, (ex, dw, pr), se = self._block_parts(G)
        blocks = ((ex + dw + pr + se) * active).sum(1)
        return self.stem[r] + self.first_dw[r] + self.first_pw[r] + blocks + self.final[r] + self.fixed_head

    def bitops64(self, G: np.ndarray) -> np.ndarray:
        """64 x BitOPs of every genome (int64, exact)."""
        G = np.asarray(G)
        g = self.genome
        r, active, (ex, dw, pr), se = self._block_parts(G)
        bb = g.bit_values(G, "block_bits").reshape(len(G), -1, BLOCK_BITS)  # (n, B, 6)
        wa = bb[..., :3] * bb[..., 3:]  # (n, B, 3): expand, dw, project
        blocks = ((ex * wa[..., 0] + dw * wa[..., 1] + pr * wa[..., 2] + se * FLOAT_BITS**2) * active).sum(1)
        fb = g.bit_values(G, "first_bits")  # w_dw, w_pw, a_dw, a_pw
        first = self.first_dw[r] * fb[:, 0] * fb[:, 2] + self.first_pw[r] * fb[:, 1] * fb[:, 3]
        final_b = g.bit_values(G, "final_bits")
        final = self.final[r] * final_b[:, 0] * final_b[:, 1]
        if not g.space.elastic_mix:
            fixed = (self.stem[r] + self.fixed_head) * self.fixed_bits_product
            return fixed + first + blocks + final
        mix_b = g.bit_values(G, "mix_bits")
        fixed = (self.stem[r] + self.fixed_head - self.mix) * self.fixed_bits_product
        return fixed + first + blocks + final + self.mix * mix_b[:, 0] * mix_b[:, 1]

    def bitops(self, G: np.ndarray) -> np.ndarray:
        """BitOPs of every genome (float64, as ``metrics.subnet_cost`` reports them)."""
        return self.bitops64(G) / 64.0

    def minimum(self, resolutions: tuple[int, ...] | None = None) -> tuple[int, float]:
        """(MACs, BitOPs) lower bounds over the subnets at ``resolutions`` (default: all).

        Both grow with every choice, so the smallest subnet at the lowest bits meets both bounds.
        """
        from dataclasses import replace

        from qfa_deploy.arch import ArchConfig

        sp = self.genome.space
        res = min(resolutions or sp.resolutions)
        G = self.genome.encode([replace(ArchConfig.smallest(sp.name), resolution=res)])
        return int(self.macs(G)[0]), float(self.bitops(G)[0])
