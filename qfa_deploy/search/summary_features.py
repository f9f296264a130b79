"""A few dozen summary features of genomes, for a predictor fitted on few measured subnets.

The one-hot encoding (``search.encoding``) has ~500 features for the CIFAR-10 space; fitted on the
~200 subnets a 2-core machine measures in an hour, an MLP on it ranks unseen subnets worse than MACs
alone. These features say what matters in fewer numbers: the resolution; per stage its depth and its
active blocks' mean kernel and expand ratio; over all active blocks the mean bits of each of the six
conv genes (w and a of expand, depthwise, project); the first block's, final expand's and (where the
space chooses them) feature mix's bits; log MACs and log BitOPs. For the CIFAR-10 space that is
1 + 3 * 5 + 6 + 4 + 2 + 2 = 30 features.
"""

from __future__ import annotations

import numpy as np

from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import BLOCK_BITS, GenomeSpace

__all__ = ["SummaryEncoder"]


class SummaryEncoder:
    """Genome matrix (n, length) -> float32 summary features (n, num_features)."""

    def __init__(self, genome: GenomeSpace) -> None:
        self.genome = genome
        self.cost = CostModel(genome)
        sp = genome.space
        self.names = ["resolution"]
        for what in ("depth", "kernel", "expand"):
            self.names += [f"stage{s}_{what}" for s in range(sp.num_stages)]
        self.names += [f"block_{kind}_bits" for kind in ("w_expand", "w_dw", "w_project", "a_expand", "a_dw",
                                                          "a_project")]
        self.names += ["first_w_dw", "first_w_project", "first_a_dw", "first_a_project", "final_w", "final_a"]
        if sp.elastic_mix:
            self.names += ["mix_w", "mix_a"]
        self.names += ["log_macs", "log_bitops"]
        self.num_features = len(self.names)

    def __call__(self, G: np.ndarray) -> np.ndarray:
        g, sp = self.genome, self.genome.space
        G = np.asarray(G)
        n, stages, depth = len(G), sp.num_stages, sp.max_depth
        active = g.active(G).astype(np.float64)  # (n, blocks)
        per_stage = active.reshape(n, stages, depth).sum(2)  # every stage has at least one block

        def value(name: str, choices) -> np.ndarray:
            return np.asarray(choices, dtype=np.float64)[g.part(G, name)]

        def stage_mean(per_block: np.ndarray) -> np.ndarray:
            return (per_block * active).reshape(n, stages, depth).sum(2) / per_stage

        block_bits = g.bit_values(G, "block_bits").reshape(n, sp.num_blocks, BLOCK_BITS).astype(np.float64)
        columns = [
            value("resolution", sp.resolutions),
            value("depth", sp.depth_choices),
            stage_mean(value("kernel", sp.kernel_choices)),
            stage_mean(value("expand", sp.expand_choices)),
            (block_bits * active[:, :, None]).sum(1) / active.sum(1, keepdims=True),
            g.bit_values(G, "first_bits"),
            g.bit_values(G, "final_bits"),
        ]
        if sp.elastic_mix:
            columns.append(g.bit_values(G, "mix_bits"))
        columns.append(np.stack([np.log(self.cost.macs(G).astype(np.float64)), np.log(self.cost.bitops(G))], 1))
        return np.concatenate([np.asarray(c, dtype=np.float64).reshape(n, -1) for c in columns], 1).astype(np.float32)
