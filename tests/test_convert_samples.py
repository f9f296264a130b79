"""``convert qfa-samples``: the seed's measured (subnet, accuracy) samples -> ``collect`` records that
``predictor fit`` reads.

The samples are written here in the seed's two formats (apple/ml-batchquant, read from its code; no
file of it is used):

- ``collect_network_info.py`` writes one JSON object per measured subnet, ``samples/<uuid>.json``:
  ``get_net_info``'s ``params``/``flops``, ``loss``, ``RunManager.validate``'s metrics (``target_metric``,
  ``acc1``, ``acc5``: percent), ``r``, ``ks``, ``e``, ``d`` (``runtime_depth``) and ``b``: every quantizer of
  ``QFAMobileNetV3.quantizer_dict`` (module name, in ``named_modules`` order) -> its active bits; the first
  conv's are 32 (float) and the classifier's 8 (``override_quantizer``);
- ``qsamples_8k.json`` (read by ``nsgaii_search.py``): a JSON list of records with ``acc1``,
  ``lut_flops``, ``ks``, ``e``, ``d``, ``r`` and ``bs``, ``get_pareto_config``'s (w, a) bits per layer
  (first conv, 21 blocks of 6 with the first block's absent expand conv as 4, 4, final expand,
  feature mix, classifier); ``get_gene`` makes the gene ``ks + e + d + [r] + concatenate(bs[1:-1])``.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from qfa_deploy.cli import cli
from qfa_deploy.convert.qfa_gene import gene_to_arch
from qfa_deploy.search.collect import load_records, records_to_arrays

N = 40


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _quantizer_names() -> list[str]:
    """``QFAMobileNetV3.quantizer_dict``'s names for W1.2, kernels {3, 5, 7}, in the seed's order."""
    names = ["first_conv.conv.w_quantizer", "first_conv.conv.a_quantizer"]
    first = "blocks.0.mobile_inverted_conv"
    names += [f"{first}.depth_conv.conv.w_quantizers.3", f"{first}.depth_conv.conv.a_quantizers.3",
              f"{first}.point_linear.conv.w_quantizer", f"{first}.point_linear.conv.a_quantizer"]
    for n in range(1, 21):
        block = f"blocks.{n}.mobile_inverted_conv"
        names += [f"{block}.inverted_bottleneck.conv.w_quantizer", f"{block}.inverted_bottleneck.conv.a_quantizer"]
        names += [f"{block}.depth_conv.conv.w_quantizers.{k}" for k in (3, 5, 7)]
        names += [f"{block}.depth_conv.conv.a_quantizers.{k}" for k in (3, 5, 7)]
        names += [f"{block}.point_linear.conv.w_quantizer", f"{block}.point_linear.conv.a_quantizer"]
    for layer in ("final_expand_layer.conv", "feature_mix_layer.conv", "classifier.linear"):
        names += [f"{layer}.w_quantizer", f"{layer}.a_quantizer"]
    assert len(names) == 212
    return names


def _seed_sample(rng: random.Random) -> tuple[dict, dict, list[int]]:
    """One measured subnet: (collect_network_info's record, the qsamples record, get_gene's gene)."""
    ks = [rng.choice([3, 5, 7]) for _ in range(20)]
    e = [rng.choice([3, 4, 6]) for _ in range(20)]
    d = [rng.choice([2, 3, 4]) for _ in range(5)]
    r = 128 + 4 * rng.randrange(25)
    b = {name: rng.choice([2, 3, 4]) for name in _quantizer_names()}
    b["first_conv.conv.w_quantizer"] = b["first_conv.conv.a_quantizer"] = 32
    b["classifier.linear.w_quantizer"] = b["classifier.linear.a_quantizer"] = 8
    mean_bits = sum(v for v in b.values() if v < 8) / 208
    acc1 = round(40 + 8 * mean_bits + 0.02 * r + sum(d) + rng.random(), 3)
    collected = {"params": 5e6, "flops": 300.0, "loss": 1.5, "target_metric": acc1, "acc1": acc1,
                 "acc5": min(100.0, acc1 + 20), "r": r, "ks": ks, "e": e, "d": d, "b": b}

    def pair(conv: str, suffix: str = "") -> list[int]:
        plural = "s" if suffix else ""
        return [b[f"{conv}.w_quantizer{plural}{suffix}"], b[f"{conv}.a_quantizer{plural}{suffix}"]]

    bs = [pair("first_conv.conv")]
    first = "blocks.0.mobile_inverted_conv"
    bs.append([4, 4] + pair(f"{first}.depth_conv.conv", ".3") + pair(f"{first}.point_linear.conv"))
    for n in range(1, 21):
        block = f"blocks.{n}.mobile_inverted_conv"
        bs.append(pair(f"{block}.inverted_bottleneck.conv") + pair(f"{block}.depth_conv.conv", f".{ks[n - 1]}")
                  + pair(f"{block}.point_linear.conv"))
    bs += [pair("final_expand_layer.conv"), pair("feature_mix_layer.conv"), pair("classifier.linear")]
    qsample = {"acc1": acc1, "lut_flops": 250.0, "ks": ks, "e": e, "d": d, "r": r, "bs": bs}
    gene = ks + e + d + [r] + [v for layer in bs[1:-1] for v in layer]  # nsgaii_search.get_gene
    return collected, qsample, gene


@pytest.fixture(scope="module")
def seed_samples(tmp_path_factory):
    rng = random.Random(5)
    samples = [_seed_sample(rng) for _ in range(N)]
    folder = tmp_path_factory.mktemp("seed") / "samples"
    folder.mkdir()
    for collected, _, _ in samples:
        (folder / f"{rng.getrandbits(128):032x}.json").write_text(json.dumps(collected, indent=4) + "\n")
    qsamples = folder.parent / "qsamples.json"
    qsamples.write_text(json.dumps([q for _, q, _ in samples]))
    return folder, qsamples, samples


def test_a_qsamples_list_converts_to_collect_records(seed_samples, tmp_path):
    _, qsamples, samples = seed_samples
    out = tmp_path / "acc.jsonl"
    code, _, err = _run("convert", "qfa-samples", qsamples, "-o", out)
    assert code == 0, err
    records = load_records(out)
    space, cfgs, top1 = records_to_arrays(records, out)
    assert space == "qfa-mbv3-w1.2" and len(cfgs) == N
    for i, (rec, cfg, (_, q, gene)) in enumerate(zip(records, cfgs, samples, strict=True)):
        assert rec["index"] == i and cfg == gene_to_arch(gene)  # the gene the seed's get_gene makes
        assert rec["top1"] == pytest.approx(q["acc1"] / 100) and rec["digest"] == cfg.digest()
        assert rec["source"]["lut_flops"] == 250.0


def test_a_folder_of_collected_files_gives_the_same_subnets(seed_samples, tmp_path):
    folder, qsamples, samples = seed_samples
    code, _, err = _run("convert", "qfa-samples", folder, "-o", tmp_path / "a.jsonl")
    assert code == 0, err
    code, _, err = _run("convert", "qfa-samples", qsamples, "-o", tmp_path / "b.jsonl")
    assert code == 0, err
    by_file = load_records(tmp_path / "a.jsonl")
    by_list = {r["digest"]: r for r in load_records(tmp_path / "b.jsonl")}
    assert len(by_file) == N and {r["digest"] for r in by_file} == set(by_list)
    for rec in by_file:  # the files are read in name order: match by subnet
        other = by_list[rec["digest"]]
        assert rec["arch"] == other["arch"] and rec["top1"] == other["top1"] and rec["macs"] == other["macs"]
        assert rec["source"]["sample"].endswith(".json") and rec["source"]["acc5"] >= rec["source"]["acc1"]


def test_predictor_fit_reads_the_converted_records(seed_samples, tmp_path):
    _, qsamples, _ = seed_samples
    acc = tmp_path / "acc.jsonl"
    assert _run("convert", "qfa-samples", qsamples, "-o", acc)[0] == 0
    code, out, err = _run("predictor", "fit", acc, "-o", tmp_path / "pred.pt", "--max-epochs", "30",
                          "--hidden", "32", "--json", "--threads", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["n_train"] + report["holdout"]["n"] == N and (tmp_path / "pred.pt").is_file()


# ---- bad inputs: one line, exit 2, no output --------------------------------------------------------


def _refused(tmp_path, source, *needles):
    out = tmp_path / "out.jsonl"
    code, _, err = _run("convert", "qfa-samples", source, "-o", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []


def _copy(seed_samples, i: int, form: int) -> dict:
    """A copy of sample ``i`` in the collected (``form`` 0) or the qsamples (1) form."""
    return json.loads(json.dumps(seed_samples[2][i][form]))


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda r: r.pop("acc1"), "no 'acc1'"),
    (lambda r: r.update(acc1=150.0), "'acc1' = 150.0 is outside"),
    (lambda r: r.update(ks=r["ks"][:19]), "'ks' has 19 values"),
    (lambda r: r.update(r=130), "resolution"),
    (lambda r: r["bs"][5].__setitem__(2, 5), "blocks[3].w_bits[1] = 5"),
    (lambda r: r["bs"].pop(), "'bs' lists 24 layers"),
    (lambda r: r["bs"][3].pop(), "'bs'[3] has 5 bits"),
    (lambda r: r.update(d="4"), "'d' must be list"),
    (lambda r: r.pop("bs"), "no bits"),
])
def test_bad_qsamples_records(seed_samples, tmp_path, mutate, needle):
    rec = _copy(seed_samples, 1, 1)
    mutate(rec)
    (tmp_path / "q.json").write_text(json.dumps([_copy(seed_samples, 0, 1), rec]))
    _refused(tmp_path, tmp_path / "q.json", "q.json[1]", needle)


def test_bad_collected_files(seed_samples, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    rec = _copy(seed_samples, 0, 0)
    del rec["b"]["blocks.4.mobile_inverted_conv.depth_conv.conv.a_quantizers.5"]
    rec["ks"][3] = 5
    (folder / "a.json").write_text(json.dumps(rec))
    _refused(tmp_path, folder, "a.json", "no quantizer blocks.4.mobile_inverted_conv.depth_conv.conv.a_quantizers.5")
    rec["ks"][3] = 4
    (folder / "a.json").write_text(json.dumps(rec))
    _refused(tmp_path, folder, "'ks' holds [4]")


def test_bad_files_and_folders(tmp_path):
    _refused(tmp_path, tmp_path / "absent", "no such sample file or folder")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, tmp_path / "empty", "no .json sample files")
    (tmp_path / "bad.json").write_text("{not json")
    _refused(tmp_path, tmp_path / "bad.json", "not valid JSON")
    (tmp_path / "nan.json").write_text('[{"acc1": NaN}]')
    _refused(tmp_path, tmp_path / "nan.json", "non-finite")
    (tmp_path / "list.json").write_text("[1, 2]")
    _refused(tmp_path, tmp_path / "list.json", "a sample is a JSON object")
    (tmp_path / "none.json").write_text("[]")
    _refused(tmp_path, tmp_path / "none.json", "holds no samples")
    (tmp_path / "num.json").write_text("3")
    _refused(tmp_path, tmp_path / "num.json", "not int")


def test_existing_output_needs_force(seed_samples, tmp_path):
    _, qsamples, _ = seed_samples
    out = tmp_path / "acc.jsonl"
    out.write_text("keep\n")
    code, _, err = _run("convert", "qfa-samples", qsamples, "-o", out)
    assert code == 2 and "exists" in err and out.read_text() == "keep\n", err
    assert _run("convert", "qfa-samples", qsamples, "-o", out, "--force")[0] == 0
    assert len(load_records(out)) == N
