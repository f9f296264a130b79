"""One-hot features of genomes for the accuracy predictor (vectorised: one scatter per matrix).

Features, in order: resolution one-hot; per elastic block an active flag; per block kernel and
expand one-hot and a one-hot per conv bit (w and a of expand, depthwise, project), all zero when
the block is inactive; first-block bits one-hot; final-expand bits one-hot; feature-mix bits one-hot
(spaces that choose them). Depth is carried by the active flags (a stage of depth d has its first d
flags set). For the CIFAR-10 space that is
3 + 20 * (1 + 3 + 3 + 6 * 3) + 4 * 3 + 2 * 3 = 521 features.
"""

from __future__ import annotations

import numpy as np

from qfa_deploy.search.genome import GenomeSpace

__all__ = ["OneHotEncoder"]


class OneHotEncoder:
    """Genome matrix (n, length) -> float32 feature matrix (n, num_features)."""

    def __init__(self, genome: GenomeSpace) -> None:
        self.genome = genome
        B = genome.space.num_blocks
        depth = genome.slices["depth"]
        # Every gene but the depths is one-hot encoded, at its own offset.
        self.genes = np.array([i for i in range(genome.length) if not depth.start <= i < depth.stop])
        sizes = genome.sizes[self.genes]
        self.active_offset = int(sizes[0])  # block flags follow the resolution one-hot
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        offsets[1:] += B
        self.offsets = offsets
        self.owner = genome.owner[self.genes]
        self.num_features = int(sizes.sum()) + B

    def __call__(self, G: np.ndarray) -> np.ndarray:
        G = np.asarray(G)
        n, B = len(G), self.genome.space.num_blocks
        active = self.genome.active(G)
        X = np.zeros((n, self.num_features), dtype=np.float32)
        X[:, self.active_offset : self.active_offset + B] = active
        on = np.ones((n, len(self.genes)), dtype=np.float32)
        owned = self.owner >= 0
        on[:, owned] = active[:, self.owner[owned]]
        rows = np.arange(n)[:, None]
        X[rows, self.offsets[None, :] + G[:, self.genes]] = on
        return X
