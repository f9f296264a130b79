"""Accuracy predictor (fit, save/load, wrong space) and `collect` (deterministic samples, resume)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qfa_deploy.errors import QfaError
from qfa_deploy.search.collect import CollectSettings, collect, load_records, records_to_arrays, sample_for
from qfa_deploy.search.encoding import OneHotEncoder
from qfa_deploy.search.fitting import fit_and_report
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.predictor import RIDGE_PENALTIES, AccuracyPredictor, fit_predictor
from qfa_deploy.search.summary_features import SummaryEncoder

torch.set_num_threads(1)
SPACE = "qfa-mbv3-cifar10"


def _synthetic(n: int, seed: int = 0):
    """Genomes and a target with a dominant trend (number of active blocks) plus fine structure (a
    fixed random linear function of the one-hot features)."""
    g = GenomeSpace(SPACE)
    G = g.random(n, np.random.default_rng(seed))
    X = OneHotEncoder(g)(G)
    w = np.random.default_rng(123).normal(0, 1, X.shape[1])
    active = g.active(G).sum(1)
    y = 0.6 + 0.02 * active + 0.002 * (X @ w)
    return g, G, y


def test_predictor_learns_a_held_out_ranking():
    g, G, y = _synthetic(600)
    space, cfgs = SPACE, g.decode_all(G)
    pred, report = fit_and_report(
        space, cfgs, y, holdout=0.25, ensemble=1, hidden=64, max_epochs=40, seed=0, cost_features=False
    )
    h = report["holdout"]
    assert h["n"] == 150 and report["n_train"] == 450
    assert h["spearman"] > 0.9, h
    assert h["rmse_points"] < 100 * y.std() * 0.5, h  # well below predicting the mean
    assert pred.info["holdout"] == h


def _reference_summary(cfg, sp) -> list[float]:
    """The summary features of one config, computed from the config itself (not the genome)."""
    from qfa_deploy.metrics import subnet_cost

    stages, depth = sp.num_stages, sp.max_depth
    active = [b for s in range(stages) for b in range(s * depth, s * depth + cfg.depths[s])]
    row = [cfg.resolution, *cfg.depths]
    for values in (cfg.kernel, cfg.expand):
        row += [np.mean([values[b] for b in active if b // depth == s]) for s in range(stages)]
    row += [np.mean([(*cfg.w_bits[b], *cfg.a_bits[b])[j] for b in active]) for j in range(6)]
    row += [*cfg.first_w_bits, *cfg.first_a_bits, cfg.final_w_bits, cfg.final_a_bits]
    cost = subnet_cost(cfg)
    return row + [np.log(cost.macs), np.log(cost.bitops)]


@pytest.mark.parametrize("seed", [0, 1])
def test_summary_features_follow_the_configs(seed):
    g = GenomeSpace(SPACE)
    G = g.random(5, np.random.default_rng(seed))
    got = SummaryEncoder(g)(G)
    for row, cfg in zip(got, g.decode_all(G), strict=True):
        assert np.allclose(row, _reference_summary(cfg, g.space), rtol=1e-6), cfg


def test_ridge_ranks_held_out_subnets_of_a_summary_target():
    """A target that is (nearly) linear in the summary features: resolution, bits and depth, plus
    noise. The ridge predictor recovers its ranking on held-out subnets from 150 training subnets."""
    g = GenomeSpace(SPACE)
    G = g.random(200, np.random.default_rng(4))
    features = SummaryEncoder(g)(G)
    names = SummaryEncoder(g).names
    assert features.shape == (200, len(names)) == (200, 30) and np.isfinite(features).all()
    col = {name: features[:, i] for i, name in enumerate(names)}
    y = (0.5 + 0.002 * col["resolution"] + 0.01 * col["block_w_project_bits"] + 0.005 * col["stage3_depth"]
         + np.random.default_rng(5).normal(0, 0.002, 200))
    pred, report = fit_and_report(SPACE, g.decode_all(G), y, holdout=0.25, model="ridge", seed=0)
    assert report["model"] == pred.model == "ridge" and report["ridge_penalty"] in RIDGE_PENALTIES
    assert report["holdout"]["spearman"] > 0.95, report["holdout"]
    assert report["holdout"]["spearman"] > report["baseline_mflops_spearman"]


def test_ridge_round_trip_and_a_version_1_file(tmp_path):
    g, G, y = _synthetic(60, seed=2)
    ridge = fit_predictor(SPACE, G, y, model="ridge", seed=0)
    ridge.save(tmp_path / "ridge.pt")
    payload = torch.load(tmp_path / "ridge.pt", weights_only=True)
    assert payload["features"] == "summary" and payload["layers"] == 0 and len(payload["members"]) == 1
    back = AccuracyPredictor.load(tmp_path / "ridge.pt", expect_space=SPACE)
    probe = g.random(30, np.random.default_rng(3))
    assert back.model == "ridge" and np.array_equal(back.predict_genomes(probe), ridge.predict_genomes(probe))
    # a file of the first format (before "features"): a one-hot MLP, read as before
    mlp = fit_predictor(SPACE, G, y, hidden=16, max_epochs=3, seed=0).to_payload()
    del mlp["features"]
    mlp["version"] = 1
    torch.save(mlp, tmp_path / "v1.pt")
    old = AccuracyPredictor.load(tmp_path / "v1.pt")
    assert old.model == "mlp" and old.predict_genomes(probe).shape == (30,)
    # unknown features or model: one line
    payload["features"] = "pixels"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(QfaError, match="unknown predictor features 'pixels'") as err:
        AccuracyPredictor.load(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(QfaError, match="unknown predictor model"):
        fit_predictor(SPACE, G, y, model="forest")


def test_save_load_round_trip_and_wrong_space(tmp_path):
    g, G, y = _synthetic(80, seed=1)
    pred = fit_predictor(SPACE, G, y, ensemble=2, hidden=16, max_epochs=5, seed=3)
    path = tmp_path / "pred.pt"
    pred.save(path)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["space"] == SPACE and payload["version"] == 2 and payload["features"] == "onehot"
    back = AccuracyPredictor.load(path, expect_space=SPACE)
    probe = g.random(40, np.random.default_rng(9))
    assert np.array_equal(back.predict_genomes(probe), pred.predict_genomes(probe))
    assert np.array_equal(back.predict(g.decode_all(probe[:3])), pred.predict_genomes(probe[:3]))
    assert back.cost_features and len(back.members) == 2
    with pytest.raises(QfaError) as err:
        AccuracyPredictor.load(path, expect_space="qfa-mbv3-w1.2")
    assert "qfa-mbv3-cifar10" in str(err.value) and "\n" not in str(err.value)
    payload["space"] = "qfa-mbv3-w1.2"  # weights of the wrong shape for that space
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(QfaError, match="malformed"):
        AccuracyPredictor.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(QfaError, match="not a readable predictor"):
        AccuracyPredictor.load(tmp_path / "junk.pt")
    torch.save({"format": "qfa-supernet"}, tmp_path / "ckpt.pt")
    with pytest.raises(QfaError, match="not a qfa-deploy accuracy predictor"):
        AccuracyPredictor.load(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("change, needle", [
    (lambda p: p.update(feature_mean=p["feature_mean"][:3]), "feature_mean has shape (3,), expected (30,)"),
    (lambda p: p.update(feature_std=torch.zeros_like(p["feature_std"])), "feature_std holds values <= 0"),
    (lambda p: p.update(target_mean=1e308), "target_mean = 1e+308 is outside"),
    (lambda p: p.update(target_std=-1.0), "target_std = -1.0 is outside"),
    (lambda p: p.update(target_mean="0.5"), "target_mean must be int or float, not str"),
    (lambda p: p.update(cost_features="yes"), "cost_features must be bool, not str"),
    (lambda p: p["members"][0].update({k: t * 1e12 for k, t in p["members"][0].items()}), "beyond 1e+06"),
])
def test_a_tampered_ridge_predictor_is_refused_in_one_line(tmp_path, change, needle):
    """Shapes, signs and magnitudes no fit produces: refused on load, not found as a broadcast error
    or a search ranking subnets by overflow."""
    g, G, y = _synthetic(80, seed=1)
    payload = torch.load(_saved(fit_predictor(SPACE, G, y, model="ridge"), tmp_path), weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(QfaError, match="bad.pt: ") as err:
        AccuracyPredictor.load(tmp_path / "bad.pt")
    assert needle in str(err.value) and "\n" not in str(err.value)


def _saved(pred, folder):
    pred.save(folder / "pred.pt")
    return folder / "pred.pt"


def _settings(**kw) -> CollectSettings:
    base = dict(space=SPACE, seed=5, calib_batches=2, val_images=100, checkpoint="abc")
    base.update(kw)
    return CollectSettings(**base)


def _fake_measure(calls: list):
    def measure(cfg):
        calls.append(cfg.digest())
        return int(cfg.digest()[:4], 16) / 65535  # deterministic in the config

    return measure


def test_collect_resumes_after_a_kill_mid_line(tmp_path):
    out = tmp_path / "acc.jsonl"
    calls: list = []
    collect(out, 5, _settings(), _fake_measure(calls), progress=False)
    assert len(calls) == 5
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    # Simulate a kill while line 4 (index 3) was being written.
    out.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    calls.clear()
    records = collect(out, 6, _settings(), _fake_measure(calls), progress=False)
    assert len(calls) == 3  # indices 3, 4, 5 only
    assert [r["index"] for r in records] == list(range(6))
    text = out.read_bytes()
    assert text.startswith(b"".join(lines[:3])) and text.endswith(b"\n")
    on_disk = [json.loads(x) for x in text.splitlines()]
    assert [r["index"] for r in on_disk] == list(range(6))
    same = [{**json.loads(x), "seconds": 0} for x in full.splitlines()]
    assert [{**r, "seconds": 0} for r in on_disk[:5]] == same  # same samples, same results
    for r in on_disk:
        assert r["arch"] == sample_for(SPACE, 5, r["index"]).to_dict()
    calls.clear()
    collect(out, 6, _settings(), _fake_measure(calls), progress=False)
    assert calls == []
    space, cfgs, top1 = records_to_arrays(load_records(out))
    assert space == SPACE and len(cfgs) == 6 and top1.shape == (6,)


def test_collect_refuses_other_settings_and_samples_differ_by_seed(tmp_path):
    out = tmp_path / "acc.jsonl"
    collect(out, 2, _settings(), _fake_measure([]), progress=False)
    with pytest.raises(QfaError, match="seed"):
        collect(out, 3, _settings(seed=6), _fake_measure([]), progress=False)
    with pytest.raises(QfaError, match="checkpoint"):
        collect(out, 3, _settings(checkpoint="def"), _fake_measure([]), progress=False)
    assert sample_for(SPACE, 5, 0) == sample_for(SPACE, 5, 0)
    assert sample_for(SPACE, 5, 0) != sample_for(SPACE, 6, 0)
    assert sample_for(SPACE, 5, 0) != sample_for(SPACE, 5, 1)


def _data_available() -> bool:
    from qfa_deploy.data import default_data_dir

    return (default_data_dir() / "train.npz").is_file() or bool(os.environ.get("QFA_DATA_DIR"))


@pytest.mark.skipif(not _data_available(), reason="needs the CIFAR-10 copy")
def test_collect_and_fit_cli(tmp_path, cifar_supernet):
    from qfa_deploy.checkpoint import save_checkpoint
    from qfa_deploy.cli import cli

    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, SPACE, cifar_supernet.state_dict())
    out = tmp_path / "acc.jsonl"
    args = [
        "collect",
        "--checkpoint",
        str(ckpt),
        "--samples",
        "1",
        "-o",
        str(out),
        "--calib-batches",
        "1",
        "--val-images",
        "20",
        "--threads",
        "1",
    ]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    first = out.read_bytes()
    out.write_bytes(first[:-7])  # torn last line
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in recs] == [0]
    assert {**recs[0], "seconds": 0} == {**json.loads(first), "seconds": 0}  # re-measured identically
    assert all(0.0 <= x["top1"] <= 1.0 and x["val_images"] == 20 for x in recs)
    r = CliRunner().invoke(cli, ["predictor", "fit", str(out), "-o", str(tmp_path / "p.pt")], catch_exceptions=False)
    assert r.exit_code == 2 and "at least 4" in r.output  # 1 subnet cannot be split and checked
    r = CliRunner().invoke(cli, ["predictor", "fit", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "p.pt")])
    assert r.exit_code == 2 and "collect" in r.output
    assert not Path(tmp_path / "p.pt").exists()


def test_run_predictor_fit_writes_the_predictor_it_reports(tmp_path):
    from qfa_deploy.resources import asset
    from qfa_deploy.search.fitting import PredictorFitConfig, run_predictor_fit

    data = str(asset("predictor/collect-seed0.jsonl"))
    out = tmp_path / "p.pt"
    report = run_predictor_fit(PredictorFitConfig(data=[data], output=str(out), hidden=16, max_epochs=3))
    assert report["output"] == str(out) and report["sources"] == [data]
    pred = AccuracyPredictor.load(out, expect_space=SPACE)
    assert pred.info["holdout"] == report["holdout"] and pred.hidden == 16
    with pytest.raises(QfaError, match="already exists"):
        run_predictor_fit(PredictorFitConfig(data=(data,), output=str(out)))
    with pytest.raises(QfaError, match="--holdout must be between"):
        PredictorFitConfig(data=(data,), output=str(out), holdout=float("nan"))
    with pytest.raises(QfaError, match="no accuracy files"):
        PredictorFitConfig(data=(), output=str(out))
