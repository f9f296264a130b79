"""``convert qfa-gene`` / ``convert to-qfa-gene``: the seed's 176-integer gene <-> cfg.json."""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from qfa_deploy.arch import ArchConfig, load_arch, sample_arch
from qfa_deploy.cli import cli
from qfa_deploy.convert.qfa_gene import GENE_LENGTH, arch_to_gene, canonical_gene, gene_to_arch, read_genes
from qfa_deploy.errors import QfaError

W12 = "qfa-mbv3-w1.2"


def _noisy_gene(seed: int) -> list[int]:
    """A gene as the seed stores them: random choices also in the blocks the subnet does not run."""
    rng = random.Random(seed)
    cfg = sample_arch(W12, rng)
    gene = arch_to_gene(cfg)
    active = set(cfg.active_blocks())
    for b in set(range(20)) - active:
        gene[b], gene[20 + b] = rng.choice((3, 5, 7)), rng.choice((3, 4, 6))
        for j in range(6):
            gene[46 + 6 * (b + 1) + j] = rng.choice((2, 3, 4))
    return gene


def _run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_layout_is_the_seeds():
    """Positions as qfa_eval.set_active_net pops them: ks x20, e x20, d x5, r, then (w, a) pairs."""
    cfg = replace(
        ArchConfig.largest(W12), resolution=160, first_w_bits=(2, 3), first_a_bits=(4, 2),
        final_w_bits=3, final_a_bits=2, mix_w_bits=2, mix_a_bits=4,
    )
    w = list(cfg.w_bits)
    w[0] = (2, 3, 4)
    a = list(cfg.a_bits)
    a[0] = (3, 4, 2)
    kernel, expand = list(cfg.kernel), list(cfg.expand)
    kernel[19], expand[19] = 5, 3
    cfg = replace(cfg, w_bits=tuple(w), a_bits=tuple(a), kernel=tuple(kernel), expand=tuple(expand))
    gene = arch_to_gene(cfg)
    assert len(gene) == GENE_LENGTH == 176
    assert gene[19] == 5 and gene[39] == 3 and gene[40:45] == [4] * 5 and gene[45] == 160
    assert gene[46:48] == [4, 4]  # the first block has no expand conv: the seed's placeholder
    assert gene[48:52] == [2, 4, 3, 2]  # first block: dw (w, a), project (w, a)
    assert gene[52:58] == [2, 3, 3, 4, 4, 2]  # block 0: expand, dw, project as (w, a)
    assert gene[172:176] == [3, 2, 2, 4]  # final expand (w, a), feature mix (w, a)
    assert gene_to_arch(gene) == cfg


@pytest.mark.parametrize("seed", range(6))
def test_round_trip(seed):
    gene = _noisy_gene(seed)
    cfg = gene_to_arch(gene)
    back = arch_to_gene(cfg)
    assert gene_to_arch(back) == cfg and canonical_gene(gene) == back and arch_to_gene(gene_to_arch(back)) == back
    used = [i for i in range(GENE_LENGTH) if not _inactive(cfg, i)]
    assert [gene[i] for i in used] == [back[i] for i in used]  # every value the subnet uses is kept


def _inactive(cfg: ArchConfig, i: int) -> bool:
    active = set(cfg.active_blocks())
    if i < 40:
        return i % 20 not in active
    if 52 <= i < 172:
        return (i - 52) // 6 not in active
    return False


def test_bad_genes_are_one_line_errors():
    gene = _noisy_gene(0)
    with pytest.raises(QfaError, match="a gene has 176 integers, got 175"):
        gene_to_arch(gene[:-1])
    with pytest.raises(QfaError, match=r"gene\[3\] = 2.5 is not an integer"):
        gene_to_arch([*gene[:3], 2.5, *gene[4:]])
    with pytest.raises(QfaError, match=r"gene\[0\] = True is not an integer"):
        gene_to_arch([True, *gene[1:]])
    with pytest.raises(QfaError, match=r"blocks\[0\].kernel = 4 is not one of \[3, 5, 7\]"):
        gene_to_arch([4, *gene[1:]])
    with pytest.raises(QfaError, match=r"resolution = 130"):
        gene_to_arch([*gene[:45], 130, *gene[46:]])
    with pytest.raises(QfaError, match=r"feature_mix.a_bits = 8"):
        gene_to_arch([*gene[:-1], 8])
    with pytest.raises(QfaError, match="placeholder"):
        gene_to_arch([*gene[:46], 5, *gene[47:]])
    with pytest.raises(QfaError, match="'qfa-mbv3-cifar10'"):
        arch_to_gene(ArchConfig.largest("qfa-mbv3-cifar10"))


def test_cli_index_all_json_and_round_trip(tmp_path):
    genes = np.array([_noisy_gene(s) for s in range(5)], dtype=np.int64)
    npy = tmp_path / "pareto.npy"
    np.save(npy, genes)
    cfg_path = tmp_path / "cfg.json"
    code, _, err = _run("convert", "qfa-gene", str(npy), "--index", "3", "-o", str(cfg_path))
    assert code == 0, err
    assert load_arch(cfg_path) == gene_to_arch(genes[3])
    code, out, _ = _run("convert", "to-qfa-gene", str(cfg_path))
    assert code == 0 and json.loads(out) == canonical_gene(genes[3])
    # the printed gene converts back to the same file, inline or from a JSON file
    code, out2, _ = _run("convert", "qfa-gene", out.strip())
    assert code == 0 and out2 == cfg_path.read_text()
    (tmp_path / "gene.json").write_text(out)
    assert _run("convert", "qfa-gene", str(tmp_path / "gene.json"))[1] == cfg_path.read_text()
    folder = tmp_path / "all"
    code, _, err = _run("convert", "qfa-gene", str(npy), "--all", str(folder))
    assert code == 0, err
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"qfa-gene-{i:03d}.json" for i in range(5)]
    for f, g in zip(files, genes, strict=True):
        assert json.loads(_run("convert", "to-qfa-gene", str(f))[1]) == canonical_gene(g)
    # a float array of whole numbers reads like the integer one
    np.save(tmp_path / "f.npy", genes[:1].astype(np.float64))
    as_float = _run("convert", "qfa-gene", str(tmp_path / "f.npy"))[1]
    assert as_float == _run("convert", "qfa-gene", str(npy), "--index", "0")[1]


def test_cli_errors_write_nothing(tmp_path):
    genes = np.array([_noisy_gene(s) for s in range(3)], dtype=np.int64)
    bad = genes.copy()
    bad[2, 0] = 4
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "good.npy", genes)
    np.save(tmp_path / "cube.npy", genes[None])
    np.save(tmp_path / "obj.npy", np.array([genes[0].tolist(), "x"], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(genes))
    (tmp_path / "short.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:100])
    (tmp_path / "text.json").write_text('{"gene": 1}')
    cifar = tmp_path / "cifar.json"
    cifar.write_text(ArchConfig.largest("qfa-mbv3-cifar10").to_json())
    exists = tmp_path / "exists.json"
    exists.write_text("keep")
    g = str(tmp_path / "good.npy")
    cases = [
        (["qfa-gene", str(tmp_path / "bad.npy"), "--all", str(tmp_path / "out")], "row 2: blocks[0].kernel = 4"),
        (["qfa-gene", g], "holds 3 genes: choose one with --index (0..2) or --all DIR"),
        (["qfa-gene", g, "--index", "3"], "--index 3 is out of range"),
        (["qfa-gene", g, "--all", str(tmp_path / "o"), "--index", "1"], "--all writes every row"),
        (["qfa-gene", g, "--index", "0", "-o", str(exists)], "already exists"),
        (["qfa-gene", str(tmp_path / "cube.npy")], "1-D or 2-D"),
        (["qfa-gene", str(tmp_path / "obj.npy")], "holds pickled data"),
        (["qfa-gene", str(tmp_path / "pickle.npy")], "holds pickled data"),
        (["qfa-gene", str(tmp_path / "short.npy")], "not a readable .npy file"),
        (["qfa-gene", str(tmp_path / "text.json")], "a gene is a JSON list of 176 integers"),
        (["qfa-gene", str(tmp_path / "missing.npy")], "no such gene file"),
        (["qfa-gene", "[1, 2"], "not valid JSON"),
        (["qfa-gene", "[1, 2]"], "a gene has 176 integers, got 2"),
        (["to-qfa-gene", str(cifar)], "describes space 'qfa-mbv3-w1.2'"),
    ]
    for args, message in cases:
        code, out, err = _run("convert", *args)
        assert code == 2 and message in err and err.count("\n") == 1 and out == "", (args, err)
    assert exists.read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name in ("out", "o")], "output left"
    genes_back, where = read_genes(g)
    assert where == g and np.array_equal(genes_back, genes)
