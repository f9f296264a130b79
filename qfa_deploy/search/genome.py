"""The genome: every choice of a subnet as one integer vector (an index into each choice list).

Layout for a space with S stages and B elastic blocks (``GenomeSpace.slices`` names the parts)::

    [resolution | depth x S | kernel x B | expand x B | first-block bits x 4 | block bits x 6B | final bits x 2
     | feature-mix bits x 2 (only in spaces where the feature mix has bit choices)]

first-block bits are (w_dw, w_project, a_dw, a_project); each block's six are (w_expand, w_dw,
w_project, a_expand, a_dw, a_project); final bits are (w, a). A genome is *canonical* when the genes
of inactive blocks (past a stage's depth) are 0, i.e. the first choice of each list — exactly what
``ArchConfig`` does on construction, so canonical genomes and configs map one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qfa_deploy.arch import CONVS_PER_BLOCK, FIRST_BLOCK_CONVS, ArchConfig
from qfa_deploy.errors import QfaError
from qfa_deploy.space import SearchSpace, create_space

__all__ = ["GenomeSpace"]

BLOCK_BITS = 2 * CONVS_PER_BLOCK
FIRST_BITS = 2 * FIRST_BLOCK_CONVS
BIT_GENES = ("first_bits", "block_bits", "final_bits", "mix_bits")  # the parts holding bitwidths


class GenomeSpace:
    """Integer encoding of the subnets of a search space (vectorised over rows of a matrix)."""

    def __init__(self, space: SearchSpace | str) -> None:
        sp = create_space(space) if isinstance(space, str) else space
        self.space = sp
        S, B = sp.num_stages, sp.num_blocks
        parts = [
            ("resolution", 1, sp.resolutions),
            ("depth", S, sp.depth_choices),
            ("kernel", B, sp.kernel_choices),
            ("expand", B, sp.expand_choices),
            ("first_bits", FIRST_BITS, sp.bit_choices),
            ("block_bits", BLOCK_BITS * B, sp.bit_choices),
            ("final_bits", 2, sp.bit_choices),
        ]
        if sp.elastic_mix:
            parts.append(("mix_bits", 2, sp.mix_bit_choices))
        self.slices: dict[str, slice] = {}
        choices: list[tuple[int, ...]] = []
        for name, count, values in parts:
            self.slices[name] = slice(len(choices), len(choices) + count)
            choices += [tuple(values)] * count
        self.choices: tuple[tuple[int, ...], ...] = tuple(choices)
        self.sizes = np.array([len(c) for c in choices], dtype=np.int64)
        self.length = len(choices)
        # Which elastic block each gene belongs to (-1: always active).
        owner = np.full(self.length, -1, dtype=np.int64)
        owner[self.slices["kernel"]] = np.arange(B)
        owner[self.slices["expand"]] = np.arange(B)
        owner[self.slices["block_bits"]] = np.repeat(np.arange(B), BLOCK_BITS)
        self.owner = owner
        # Block b = stage * max_depth + j is active iff j < depth of its stage.
        self._block_stage = np.arange(B) // sp.max_depth
        self._block_pos = np.arange(B) % sp.max_depth
        self._depth_values = np.array(sp.depth_choices, dtype=np.int64)

    # -- structure -------------------------------------------------------------------------------

    def part(self, G: np.ndarray, name: str) -> np.ndarray:
        """The genes of part ``name`` of every row (a view)."""
        return G[:, self.slices[name]]

    def active(self, G: np.ndarray) -> np.ndarray:
        """Boolean (n, num_blocks): which elastic blocks each genome runs."""
        depths = self._depth_values[self.part(G, "depth")]  # (n, S)
        return self._block_pos[None, :] < depths[:, self._block_stage]

    def canonical(self, G: np.ndarray) -> np.ndarray:
        """A copy of ``G`` with the genes of inactive blocks reset to 0 (the first choice)."""
        G = np.asarray(G)
        mask = np.ones((G.shape[0], self.length), dtype=bool)
        owned = self.owner >= 0
        mask[:, owned] = self.active(G)[:, self.owner[owned]]
        return np.where(mask, G, 0).astype(np.int64)

    def check(self, G: np.ndarray) -> None:
        G = np.asarray(G)
        if G.ndim != 2 or G.shape[1] != self.length:
            raise QfaError(f"genome matrix must be (n, {self.length}), got {G.shape}")
        if (G < 0).any() or (G >= self.sizes[None, :]).any():
            raise QfaError("genome has a gene outside its choice list")

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` canonical genomes with every gene drawn uniformly."""
        return self.canonical(rng.integers(0, self.sizes[None, :], size=(n, self.length)))

    # -- conversion ------------------------------------------------------------------------------

    def encode(self, cfgs: Sequence[ArchConfig]) -> np.ndarray:
        """Genomes (n, length) of ``cfgs`` (canonical, since configs are)."""
        sp = self.space
        index = lambda values: {v: i for i, v in enumerate(values)}
        res_i, dep_i, ker_i = index(sp.resolutions), index(sp.depth_choices), index(sp.kernel_choices)
        exp_i, bit_i, mix_i = index(sp.expand_choices), index(sp.bit_choices), index(sp.mix_bit_choices)
        G = np.empty((len(cfgs), self.length), dtype=np.int64)
        for row, cfg in enumerate(cfgs):
            if cfg.space != sp.name:
                raise QfaError(f"arch of space {cfg.space!r} given to a genome of space {sp.name!r}")
            block_bits = [bit_i[b] for w, a in zip(cfg.w_bits, cfg.a_bits, strict=True) for b in (*w, *a)]
            G[row] = [
                res_i[cfg.resolution],
                *(dep_i[d] for d in cfg.depths),
                *(ker_i[k] for k in cfg.kernel),
                *(exp_i[e] for e in cfg.expand),
                *(bit_i[b] for b in (*cfg.first_w_bits, *cfg.first_a_bits)),
                *block_bits,
                bit_i[cfg.final_w_bits],
                bit_i[cfg.final_a_bits],
                *((mix_i[cfg.mix_w_bits], mix_i[cfg.mix_a_bits]) if sp.elastic_mix else ()),
            ]
        return G

    def values(self, g: np.ndarray) -> list[int]:
        """The chosen values (not indices) of one genome."""
        return [self.choices[i][int(v)] for i, v in enumerate(g)]

    def decode(self, g: np.ndarray) -> ArchConfig:
        """The (canonical) ArchConfig of one genome."""
        g = np.asarray(g)
        if g.shape != (self.length,):
            raise QfaError(f"genome must have {self.length} genes, got shape {g.shape}")
        v = self.values(g)
        get = lambda name: v[self.slices[name]]
        bb = get("block_bits")
        blocks = [bb[i : i + BLOCK_BITS] for i in range(0, len(bb), BLOCK_BITS)]
        fb = get("first_bits")
        mix = get("mix_bits") if self.space.elastic_mix else (None, None)
        return ArchConfig(
            space=self.space.name,
            resolution=get("resolution")[0],
            depths=tuple(get("depth")),
            kernel=tuple(get("kernel")),
            expand=tuple(get("expand")),
            w_bits=tuple(tuple(b[:CONVS_PER_BLOCK]) for b in blocks),
            a_bits=tuple(tuple(b[CONVS_PER_BLOCK:]) for b in blocks),
            first_w_bits=tuple(fb[:FIRST_BLOCK_CONVS]),
            first_a_bits=tuple(fb[FIRST_BLOCK_CONVS:]),
            final_w_bits=get("final_bits")[0],
            final_a_bits=get("final_bits")[1],
            mix_w_bits=mix[0],
            mix_a_bits=mix[1],
        )

    def decode_all(self, G: np.ndarray) -> list[ArchConfig]:
        return [self.decode(g) for g in np.asarray(G)]

    def bit_values(self, G: np.ndarray, name: str) -> np.ndarray:
        """The bitwidths (values) of the bit part ``name`` of every row."""
        choices = self.space.mix_bit_choices if name == "mix_bits" else self.space.bit_choices
        return np.asarray(choices, dtype=np.int64)[self.part(G, name)]
