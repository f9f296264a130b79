"""The seed's gene: 176 integers naming one subnet of ``qfa-mbv3-w1.2`` (``pareto_archs.npy`` rows).

Layout, as the seed's ``qfa_eval.set_active_net`` reads it (values, not indices)::

    kernel x 20 | expand x 20 | depth x 5 | resolution | bits x 130

The 130 bits are (w, a) pairs in execution order: for each of the 21 blocks (the fixed first block
included) expand, depthwise, project -> 6 values (the first block has no expand conv: its pair is a
placeholder the seed skips and writes as 4, 4); then the final-expand and feature-mix convs -> 4.
Activation bits are those of each conv's input in both codes.

The seed also stores choices for blocks a subnet does not run (past a stage's depth); an
``ArchConfig`` is canonical and resets them (kernel 3, expand 3, bits 2), so ``arch_to_gene`` of a
converted gene equals the gene on every value the subnet uses and the canonical value elsewhere
(``canonical_gene``); a canonical gene round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qfa_deploy.arch import ArchConfig
from qfa_deploy.errors import QfaError
from qfa_deploy.space import create_space
from qfa_deploy.strict_json import parse_json

__all__ = [
    "GENE_LENGTH", "SEED_SPACE", "arch_to_gene", "canonical_gene", "gene_to_arch", "pick_gene", "read_genes",
    "write_gene_folder",
]

SEED_SPACE = "qfa-mbv3-w1.2"
BLOCKS, STAGES = 20, 5
GENE_LENGTH = 2 * BLOCKS + STAGES + 1 + 6 * (BLOCKS + 1) + 4  # 176
PLACEHOLDER = 4  # the first block's absent expand conv, as the seed writes it (get_pareto_config)
_BITS = 2 * BLOCKS + STAGES + 1  # where the bits start


def _as_ints(gene: Sequence, where: str) -> list[int]:
    values = list(gene)
    if len(values) != GENE_LENGTH:
        raise QfaError(f"{where}: a gene has {GENE_LENGTH} integers, got {len(values)}")
    out = []
    for i, v in enumerate(values):
        number = not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer, float, np.floating))
        # .npy files of the seed hold int64; a float array is accepted when every value is whole
        if not number or not np.isfinite(float(v)) or float(v) != round(float(v)) or abs(float(v)) > 2**31:
            raise QfaError(f"{where}: gene[{i}] = {v!r} is not an integer")
        out.append(int(v))
    return out


def gene_to_arch(gene: Sequence, where: str = "gene") -> ArchConfig:
    """The canonical ``ArchConfig`` of one seed gene; every problem is a one-line QfaError."""
    g = _as_ints(gene, where)
    sp = create_space(SEED_SPACE)
    bits = g[_BITS:]
    pairs = [tuple(bits[i : i + 2]) for i in range(0, len(bits), 2)]  # (w, a) per conv
    for j in (0, 1):
        if bits[j] not in sp.bit_choices:
            raise QfaError(f"{where}: gene[{_BITS + j}] = {bits[j]} (first-block placeholder) is not one of "
                           f"{list(sp.bit_choices)}")
    blocks = [pairs[3 * (b + 1) : 3 * (b + 2)] for b in range(BLOCKS)]  # (expand, dw, project) pairs
    first, final, mix = pairs[1:3], pairs[-2], pairs[-1]
    try:
        return ArchConfig(
            space=SEED_SPACE,
            resolution=g[2 * BLOCKS + STAGES],
            depths=tuple(g[2 * BLOCKS : 2 * BLOCKS + STAGES]),
            kernel=tuple(g[:BLOCKS]),
            expand=tuple(g[BLOCKS : 2 * BLOCKS]),
            w_bits=tuple(tuple(p[0] for p in blk) for blk in blocks),
            a_bits=tuple(tuple(p[1] for p in blk) for blk in blocks),
            first_w_bits=(first[0][0], first[1][0]),
            first_a_bits=(first[0][1], first[1][1]),
            final_w_bits=final[0],
            final_a_bits=final[1],
            mix_w_bits=mix[0],
            mix_a_bits=mix[1],
        )
    except QfaError as exc:
        raise QfaError(f"{where}: {exc}") from None


def arch_to_gene(cfg: ArchConfig) -> list[int]:
    """The seed's gene of ``cfg`` (a ``qfa-mbv3-w1.2`` config)."""
    if cfg.space != SEED_SPACE:
        raise QfaError(f"the seed's gene describes space {SEED_SPACE!r}, not {cfg.space!r}")
    bits = [PLACEHOLDER, PLACEHOLDER]
    for conv in range(2):
        bits += [cfg.first_w_bits[conv], cfg.first_a_bits[conv]]
    for w, a in zip(cfg.w_bits, cfg.a_bits, strict=True):
        for conv in range(3):
            bits += [w[conv], a[conv]]
    bits += [cfg.final_w_bits, cfg.final_a_bits, cfg.mix_w_bits, cfg.mix_a_bits]
    return [*cfg.kernel, *cfg.expand, *cfg.depths, cfg.resolution, *bits]


def canonical_gene(gene: Sequence, where: str = "gene") -> list[int]:
    """``gene`` with the choices of blocks it does not run reset as ``ArchConfig`` does."""
    return arch_to_gene(gene_to_arch(gene, where))


def read_genes(source: str) -> tuple[np.ndarray, str]:
    """Genes from a ``.npy`` file (one gene or a matrix of rows), a JSON file or a JSON list given inline.

    Returns an (n, 176) int64 matrix and how to name the source in messages.
    """
    if source.lstrip().startswith("["):
        data, where = parse_json(source, "gene"), "gene"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise QfaError(f"{path}: no such gene file (a .npy, a .json list, or an inline JSON list)")
        if path.suffix == ".npy":
            data = _load_npy(path)
        else:
            try:
                data = parse_json(path.read_bytes(), where)
            except OSError as exc:
                raise QfaError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    matrix = _as_matrix(data, where)
    return matrix, where


def pick_gene(genes: np.ndarray, where: str, index: int | None) -> ArchConfig:
    """Row ``index`` of ``genes`` (from ``read_genes``) as an arch config; ``index`` may be None only when
    there is one gene."""
    if index is None and len(genes) > 1:
        raise QfaError(f"{where} holds {len(genes)} genes: choose one with --index (0..{len(genes) - 1}) or --all DIR")
    row = index or 0
    if row >= len(genes):
        raise QfaError(f"--index {row} is out of range: {where} holds {len(genes)} gene(s)")
    return gene_to_arch(genes[row], where if len(genes) == 1 else f"{where} row {row}")


def write_gene_folder(genes: np.ndarray, where: str, folder: str | Path, force: bool = False) -> int:
    """Every row of ``genes`` as ``folder/qfa-gene-NNN.json`` (a new folder, written whole once every row
    converted); returns the number of configs."""
    from qfa_deploy.atomic import staged_directory

    cfgs = [gene_to_arch(g, f"{where} row {i}") for i, g in enumerate(genes)]  # all valid before writing
    width = max(3, len(str(len(cfgs) - 1)))
    with staged_directory(folder, force) as staged:
        for i, cfg in enumerate(cfgs):
            (staged / f"qfa-gene-{i:0{width}d}.json").write_text(cfg.to_json())
    return len(cfgs)


def _load_npy(path: Path):
    try:
        array = np.load(path, allow_pickle=False)  # a pickled object array would run code
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            reason = "holds pickled data (a pickle or an object array); only numeric arrays are read"
            raise QfaError(f"{path}: {reason}") from None
        raise QfaError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0][:100]})") from None
    except (OSError, EOFError) as exc:
        raise QfaError(f"{path}: not a readable .npy file ({exc.__class__.__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise QfaError(f"{path}: holds {getattr(array, 'dtype', type(array).__name__)}, not numbers")
    return array


def _as_matrix(data, where: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        rows = data if data.ndim == 2 else data[None] if data.ndim == 1 else None
        if rows is None:
            raise QfaError(f"{where}: a gene array is 1-D or 2-D, got shape {data.shape}")
    elif isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        rows = data
    elif isinstance(data, list):
        rows = [data]
    else:
        raise QfaError(f"{where}: a gene is a JSON list of {GENE_LENGTH} integers")
    if len(rows) == 0:
        raise QfaError(f"{where}: holds no gene")
    name = (lambda i: f"{where} row {i}") if len(rows) > 1 else (lambda i: where)
    return np.array([_as_ints(r, name(i)) for i, r in enumerate(rows)], dtype=np.int64)
