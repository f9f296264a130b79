"""Search: genome/encoding, analytic costs vs the counted network, table latency, NSGA-II, CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qfa_deploy.arch import ArchConfig, load_arch, sample_arch
from qfa_deploy.errors import QfaError
from qfa_deploy.lut import LatencyTable, space_keys
from qfa_deploy.lut.bit_kernels import BitKernels
from qfa_deploy.lut.keys import arch_keys, bits_length
from qfa_deploy.metrics import subnet_cost
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.encoding import OneHotEncoder
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.latency import LatencyModel
from qfa_deploy.search.nsga import run_nsga
from qfa_deploy.search.objectives import Constraints, CostEvaluator
from qfa_deploy.search.predictor import fit_predictor
from qfa_deploy.space import create_space

torch.set_num_threads(1)
SPACE = "qfa-mbv3-cifar10"


def _cfgs(space: str, n: int, seed: int = 0, **kw) -> list[ArchConfig]:
    cfgs = [sample_arch(space, random.Random(seed * 1000 + i), **kw) for i in range(n)]
    return cfgs


# -- genome and one-hot encoding ----------------------------------------------------------------


def test_genome_round_trip_and_canonical():
    g = GenomeSpace(SPACE)
    cfgs = _cfgs(SPACE, 20) + [ArchConfig.largest(SPACE), ArchConfig.smallest(SPACE, 3)]
    G = g.encode(cfgs)
    assert G.shape == (len(cfgs), g.length)
    assert [g.decode(row) for row in G] == cfgs
    assert np.array_equal(g.canonical(G), G)
    # A random (non-canonical) matrix canonicalises to exactly what ArchConfig keeps.
    R = np.random.default_rng(1).integers(0, g.sizes[None, :], size=(50, g.length))
    C = g.canonical(R)
    assert not np.array_equal(C, R)
    assert np.array_equal(g.encode(g.decode_all(R)), C)


def _reference_features(cfg: ArchConfig) -> list[float]:
    """Slow, obvious encoding written from the ArchConfig fields (the spec of OneHotEncoder)."""
    sp = create_space(cfg.space)
    hot = lambda v, choices, on=True: [float(on and v == c) for c in choices]  # noqa: E731
    active = set(cfg.active_blocks())
    feats = hot(cfg.resolution, sp.resolutions)
    feats += [float(b in active) for b in range(sp.num_blocks)]
    for b in range(sp.num_blocks):
        on = b in active
        feats += hot(cfg.kernel[b], sp.kernel_choices, on)
    for b in range(sp.num_blocks):
        feats += hot(cfg.expand[b], sp.expand_choices, on=b in active)
    for v in (*cfg.first_w_bits, *cfg.first_a_bits):
        feats += hot(v, sp.bit_choices)
    for b in range(sp.num_blocks):
        for v in (*cfg.w_bits[b], *cfg.a_bits[b]):
            feats += hot(v, sp.bit_choices, on=b in active)
    feats += hot(cfg.final_w_bits, sp.bit_choices) + hot(cfg.final_a_bits, sp.bit_choices)
    if sp.elastic_mix:
        feats += hot(cfg.mix_w_bits, sp.mix_bit_choices) + hot(cfg.mix_a_bits, sp.mix_bit_choices)
    return feats


@pytest.mark.parametrize("space", [SPACE, "qfa-mbv3-w1.2"])
def test_one_hot_encoding_matches_reference_and_is_deterministic(space):
    g = GenomeSpace(space)
    enc = OneHotEncoder(g)
    cfgs = _cfgs(space, 15, seed=2) + [ArchConfig.largest(space), ArchConfig.smallest(space)]
    X = enc(g.encode(cfgs))
    assert X.dtype == np.float32 and X.shape == (len(cfgs), enc.num_features)
    for row, cfg in zip(X, cfgs, strict=True):
        assert row.tolist() == _reference_features(cfg)
    assert np.array_equal(enc(g.encode(cfgs)), X)
    assert np.array_equal(OneHotEncoder(GenomeSpace(space))(g.encode(cfgs[::-1])), X[::-1])
    assert len({row.tobytes() for row in X}) == len({c.digest() for c in cfgs})


# -- analytic costs -----------------------------------------------------------------------------


def test_analytic_macs_and_bitops_equal_counted_network(cifar_supernet):
    g = GenomeSpace(SPACE)
    cm = CostModel(g)
    cfgs = _cfgs(SPACE, 6, seed=3) + [ArchConfig.largest(SPACE), ArchConfig.smallest(SPACE)]
    cfgs.append(_cfgs(SPACE, 1, seed=4)[0].with_uniform_bits(4, 2))
    G = g.encode(cfgs)
    macs, bitops = cm.macs(G), cm.bitops(G)
    for i, cfg in enumerate(cfgs):
        counted = subnet_cost(cfg, cifar_supernet)
        assert int(macs[i]) == counted.macs, cfg.short()
        assert float(bitops[i]) == counted.bitops, cfg.short()


def test_analytic_costs_equal_counted_network_imagenet_space():
    g = GenomeSpace("qfa-mbv3-w1.2")
    cfg = replace(_cfgs("qfa-mbv3-w1.2", 1, seed=5)[0], resolution=128)
    counted = subnet_cost(cfg)
    cm = CostModel(g)
    G = g.encode([cfg])
    assert int(cm.macs(G)[0]) == counted.macs
    assert float(cm.bitops(G)[0]) == counted.bitops


def test_cost_lower_bounds_are_the_smallest_subnet():
    g = GenomeSpace(SPACE)
    cm = CostModel(g)
    macs, bitops = cm.minimum()
    R = g.random(2000, np.random.default_rng(0))
    assert macs == cm.macs(g.encode([ArchConfig.smallest(SPACE)]))[0] <= cm.macs(R).min()
    assert bitops <= cm.bitops(R).min()


# -- latency from a table -----------------------------------------------------------------------


def _bit_kernels(space: str) -> BitKernels:
    """Every 1x1 conv of ``space`` from 64 input channels keyed at (2, 2) and the wider ones at (2, 3),
    (3, 2): stem, blocks and head (with the feature mix, where the space has its bits) all carry bits."""
    sp = create_space(space)
    rule = lambda ch, w, a: (w, a) == (2, 2) and ch >= 16 or ch >= 240 and w + a == 5
    return BitKernels.of_schedule(rule, space_keys(sp, sp.resolutions[-1]), sp.bit_choices)


def _table(bits_matter: bool, cfgs=(), resolution: int = 28, seed: int = 0, space: str = SPACE) -> LatencyTable:
    rng = np.random.default_rng(seed)
    kernels = _bit_kernels(space) if bits_matter else None
    if cfgs:
        keys = {k for c in cfgs for k in arch_keys(c, kernels.canonical if kernels else None)}
    else:
        keys = space_keys(space, resolution)
    entries = {str(k): float(rng.uniform(0.05, 1.0)) for k in keys}
    return LatencyTable(space, resolution, entries, bit_kernels=kernels, scale=1.07, offset_ms=0.25)


@pytest.mark.parametrize("space, resolution", [(SPACE, 28), ("qfa-mbv3-w1.2", 160)])
@pytest.mark.parametrize("bits_matter", [False, True])
def test_latency_model_equals_table_predict(bits_matter, space, resolution):
    g = GenomeSpace(space)
    cfgs = _cfgs(space, 25, seed=6, resolutions=(resolution,))
    table = _table(bits_matter, cfgs, resolution=resolution, space=space)
    got = LatencyModel(table, g).predict(g.encode(cfgs))
    want = np.array([table.predict(c) for c in cfgs])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    if bits_matter:  # every kind of part was looked up with bits somewhere
        assert {k.kind for c in cfgs for k in table.keys(c) if k.bits} == {"stem", "block", "head"}


def test_latency_model_errors():
    g = GenomeSpace(SPACE)
    cfgs = _cfgs(SPACE, 3, seed=7, resolutions=(28,))
    model = LatencyModel(_table(True, cfgs[:2]), g)
    with pytest.raises(QfaError, match="no entry"):
        model.predict(g.encode(cfgs[2:]))
    with pytest.raises(QfaError, match="resolution 32"):
        model.predict(g.encode([replace(cfgs[0], resolution=32)]))
    with pytest.raises(QfaError, match="space"):
        LatencyModel(_table(False), GenomeSpace("qfa-mbv3-w1.2"))


# -- NSGA-II ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictor():
    """A small MLP fitted to a synthetic accuracy that grows with BitOPs (plus noise)."""
    g = GenomeSpace(SPACE)
    G = g.random(300, np.random.default_rng(0))
    y = 0.5 + 0.05 * np.log(CostModel(g).bitops(G)) / 10 + np.random.default_rng(1).normal(0, 0.002, len(G))
    return fit_predictor(SPACE, G, y, ensemble=1, hidden=32, max_epochs=15, seed=0)


def test_nsga_pareto_members_satisfy_every_budget(tiny_predictor):
    g = GenomeSpace(SPACE)
    table = _table(False)
    costs = CostEvaluator(g, LatencyModel(table, g))
    low = costs.lower_bounds()
    free = run_nsga(g, tiny_predictor, costs, "latency", None, pop_size=30, generations=8, seed=0)
    budget = Constraints(
        max_latency_ms=float(np.quantile(free.costs["latency_ms"], 0.5)),
        max_mflops=low["mflops"] * 1.6,
        max_gbitops=low["gbitops"] * 2.0,
    )
    res = run_nsga(g, tiny_predictor, costs, "latency", budget, pop_size=30, generations=8, seed=0)
    assert len(res.genomes) >= 1
    for metric, bound in budget.items():
        assert (res.costs[metric] <= bound).all(), metric
    # The budgets bite: the unconstrained front goes beyond at least one of them.
    assert any((free.costs[m] > b).any() for m, b in budget.items())
    for cfg, rec in zip(res.configs(), res.records(), strict=True):
        assert table.predict(cfg) == pytest.approx(rec["latency_ms"], rel=1e-12)
        assert cfg.resolution == 28
        assert subnet_cost(cfg).macs == pytest.approx(rec["mflops"] * 1e6)
    # Pareto: sorted by cost, no member dominated by another.
    lat, acc = res.costs["latency_ms"], res.predicted
    assert (np.diff(lat) >= 0).all()
    assert not any((lat <= lat[i]).__and__(acc >= acc[i]).sum() > 1 for i in range(len(lat)))
    again = run_nsga(g, tiny_predictor, costs, "latency", budget, pop_size=30, generations=8, seed=0)
    assert np.array_equal(again.genomes, res.genomes)  # seeded


def test_a_uniform_bit_search_keeps_every_active_conv_at_its_bits(tiny_predictor):
    """``--bits 4``: the baseline a mixed-bit search under a bit-keyed table is compared with."""
    g = GenomeSpace(SPACE)
    kernels, keys = _bit_kernels(SPACE), space_keys(SPACE, 28)
    entries = {str(k): 0.1 for k in keys}
    entries |= {str(v): 0.05 for k in keys for v in kernels.variants(k, bits_length(k, create_space(SPACE)))}
    table = LatencyTable(SPACE, 28, entries, bit_kernels=kernels)
    costs = CostEvaluator(g, LatencyModel(table, g))
    for bits in (4, 2):
        res = run_nsga(g, tiny_predictor, costs, "latency", None, pop_size=20, generations=4, seed=0, bits=bits)
        for cfg in res.configs():
            active = [(*cfg.w_bits[b], *cfg.a_bits[b]) for b in cfg.active_blocks()]
            used = {*cfg.first_w_bits, *cfg.first_a_bits, cfg.final_w_bits, cfg.final_a_bits, *sum(active, ())}
            assert used == {bits}
        assert res.settings["bits"] == bits
    with pytest.raises(QfaError, match="--bits must be one of 2, 3, 4"):
        run_nsga(g, tiny_predictor, costs, "latency", None, pop_size=20, generations=1, bits=8)


def test_nsga_infeasible_budget_is_one_line_error(tiny_predictor):
    g = GenomeSpace(SPACE)
    costs = CostEvaluator(g)
    low = costs.lower_bounds()
    with pytest.raises(QfaError, match="infeasible") as err:
        run_nsga(g, tiny_predictor, costs, "flops", Constraints(max_mflops=low["mflops"] * 0.99), 10, 2)
    assert "\n" not in str(err.value)
    with pytest.raises(QfaError, match="latency table"):
        run_nsga(g, tiny_predictor, costs, "latency", None, 10, 2)


def test_nsga_jointly_infeasible_budgets_are_one_line_error(tiny_predictor):
    # A table where bigger blocks are *faster*: the fastest subnet is not the one with fewest MACs,
    # so budgets just above both minima cannot be met together (each alone can).
    g = GenomeSpace(SPACE)
    table = _table(False)
    for key in table.entries:
        if key.startswith("block|"):
            k = int(key.split("|")[3][1:])
            table.entries[key] = 1.0 / k
    costs = CostEvaluator(g, LatencyModel(table, g))
    low = costs.lower_bounds()
    budget = Constraints(max_latency_ms=low["latency_ms"] * 1.001, max_mflops=low["mflops"] * 1.001)
    with pytest.raises(QfaError, match="no subnet found within the budget") as err:
        run_nsga(g, tiny_predictor, costs, "latency", budget, pop_size=12, generations=3, seed=0)
    assert "\n" not in str(err.value)


# -- CLI ----------------------------------------------------------------------------------------


def _cli(args):
    from qfa_deploy.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_search_cli_writes_loadable_cfg_pareto_and_plot(tmp_path, tiny_predictor):
    pred = tmp_path / "pred.pt"
    tiny_predictor.save(pred)
    table = tmp_path / "table.json"
    _table(False).save(table)
    out, best, png = tmp_path / "pareto.json", tmp_path / "best.json", tmp_path / "front.png"
    r = _cli(
        [
            "search",
            "--predictor",
            str(pred),
            "--table",
            str(table),
            "--max-latency-ms",
            "9",
            "--max-bitops",
            "0.004",
            "--pop",
            "20",
            "--gen",
            "5",
            "-o",
            str(out),
            "--best-out",
            str(best),
            "--plot",
            str(png),
        ]
    )
    assert r.exit_code == 0, r.output
    cfg = load_arch(best, expect_space=SPACE)
    front = json.loads(out.read_text())
    assert isinstance(front, list) and front
    assert all(m["latency_ms"] <= 9 and m["gbitops"] <= 0.004 for m in front)
    chosen = max(front, key=lambda m: m["predicted_top1"])
    assert ArchConfig.from_dict(chosen["arch"]) == cfg
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_cli_errors(tmp_path, tiny_predictor):
    pred = tmp_path / "pred.pt"
    tiny_predictor.save(pred)
    # no --predictor: the embedded one (the embedded checkpoint's space), refused for a table of another space
    r = _cli(["search", "--table", "x86-1t-qfa-mbv3-w1.2-r224.json", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "'qfa-mbv3-w1.2'" in r.output and "'qfa-mbv3-cifar10'" in r.output
    r = _cli(["search", "--predictor", str(pred), "--max-flops", "0.5", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "infeasible" in r.output
    r = _cli(["search", "--predictor", str(pred), "--max-latency-ms", "3", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "--table" in r.output
    assert not (tmp_path / "p.json").exists()


def test_evaluate_choice_reports_the_latency_statistic_of_the_device_protocol(tmp_path):
    """The chosen subnet, really calibrated, scored, exported, compiled and profiled: its measured latency
    is the statistic the device's table holds (x86-1t: the minimum), not always the median."""
    from qfa_deploy.commands.common import load_supernet
    from qfa_deploy.data import load_splits
    from qfa_deploy.search.end_to_end import evaluate_choice

    net = load_supernet(None)
    cfg = ArchConfig.smallest(net.space.name)
    out = evaluate_choice(net, cfg, load_splits(net.space), {"predicted_top1": 0.4}, calib_batches=1,
                          test_limit=100, device="x86-1t", artifact_dir=tmp_path / "art")
    m = out["measured"]
    assert m["test_images"] == 100 and 0.0 < m["top1"] <= 1.0
    assert m["statistic"] == "min"
    assert 0 < m["latency_ms"]["min"] <= m["latency_ms"]["median"]
    assert (tmp_path / "art" / "meta.json").is_file()


# -- library entry point (issue 26: the CLI verb is a thin layer over run_search) ------------------


def test_run_search_from_python_writes_what_the_cli_writes(tmp_path, tiny_predictor):
    from qfa_deploy.search.run import SearchConfig, run_search

    pred = tmp_path / "pred.pt"
    tiny_predictor.save(pred)
    table = tmp_path / "table.json"
    _table(False).save(table)
    budget = ["--max-latency-ms", "9", "--pop", "20", "--gen", "4", "--seed", "3"]
    r = _cli(["search", "--predictor", str(pred), "--table", str(table), *budget, "-o", str(tmp_path / "cli.json"),
              "--json"])
    assert r.exit_code == 0, r.output
    from_cli = json.loads(r.output)
    config = SearchConfig(output=str(tmp_path / "py.json"), predictor=str(pred), table=str(table),
                          max_latency_ms=9.0, pop_size=20, generations=4, seed=3, best_out=str(tmp_path / "b.json"))
    outcome = run_search(config)
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert load_arch(tmp_path / "b.json") == outcome.best
    for key in ("space", "objective", "constraints", "pareto_size", "evaluations", "best"):
        assert outcome.summary[key] == from_cli[key], key
    assert outcome.summary["objective"] == "latency" and outcome.best_record["latency_ms"] <= 9
    with pytest.raises(QfaError, match="already exists"):  # outputs are checked before the search, as in the CLI
        run_search(config)


@pytest.mark.parametrize("fields, message", [
    ({"device": "x86-1t"}, "--device goes with --evaluate"),
    ({"max_latency_ms": 3.0}, "needs a latency table"),
    ({"objective": "latency"}, "needs a latency table"),
    ({"objective": "speed"}, "--objective must be one of latency, flops, bitops"),
    ({"max_flops": float("nan")}, "--max-flops must be a positive number"),
    ({"max_bitops": -1.0}, "--max-bitops must be a positive number"),
    ({"pop_size": 1}, "--pop must be at least 2"),
    ({"test_limit": 0}, "--test-limit must be at least 1"),
])
def test_search_config_refuses_what_cannot_run(fields, message):
    from qfa_deploy.search.run import SearchConfig

    with pytest.raises(QfaError, match=message):
        SearchConfig(output="p.json", **fields)
