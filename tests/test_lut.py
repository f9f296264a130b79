"""Latency tables: keys, prediction, the kill-safe journal, the fitted correction, the files."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.deploy.targets.arm.bitserial import runs_bitserial
from qfa_deploy.errors import QfaError
from qfa_deploy.lut import LatencyKey, LatencyTable, arch_keys, space_keys
from qfa_deploy.lut.bit_kernels import BitKernels
from qfa_deploy.lut.build import fit_correction
from qfa_deploy.lut.journal import Journal
from qfa_deploy.lut.keys import bits_length
from qfa_deploy.space import create_space

SPACE = "qfa-mbv3-cifar10"


def _table(resolution: int = 32) -> LatencyTable:
    entries = {str(k): 0.1 + 0.01 * i for i, k in enumerate(space_keys(SPACE, resolution))}
    return LatencyTable(space=SPACE, resolution=resolution, entries=entries, scale=1.5, offset_ms=0.25)


def test_key_text_round_trip():
    for key in space_keys("qfa-mbv3-w1.2", 224):
        assert LatencyKey.parse(str(key)) == key
    with_bits = LatencyKey("block", 8, 16, 96, 24, 5, 2, True, "relu", (2, 3, 4, 4, 3, 2))
    assert LatencyKey.parse(str(with_bits)) == with_bits


def test_every_subnet_is_covered_by_the_space_keys():
    keys = {str(k) for k in space_keys(SPACE, 28)}
    for seed in range(30):
        cfg = sample_arch(SPACE, random.Random(seed), resolutions=[28])
        parts = arch_keys(cfg)
        assert len(parts) == 2 + len(cfg.active_blocks())
        assert {str(k) for k in parts} <= keys


def test_predict_is_scaled_part_sum_and_checks_resolution():
    table = _table()
    cfg = ArchConfig.largest(SPACE)
    expected = sum(table.entries[str(k)] for k in arch_keys(cfg))
    assert table.part_sum(cfg) == pytest.approx(expected)
    assert table.predict(cfg) == pytest.approx(1.5 * expected + 0.25)
    with pytest.raises(QfaError, match="resolution"):
        table.predict(ArchConfig.smallest(SPACE))  # 24 px


def test_bits_do_not_change_the_default_keys_but_can():
    cfg = ArchConfig.largest(SPACE)
    assert arch_keys(cfg) == arch_keys(cfg.with_uniform_bits(2, 2))
    kernels = BitKernels.of_schedule(runs_bitserial, space_keys(SPACE, 32), (2, 3, 4))
    assert arch_keys(cfg, kernels.canonical) == arch_keys(cfg)  # W4A4: every conv runs its highest-bit kernel
    assert arch_keys(cfg, kernels.canonical) != arch_keys(cfg.with_uniform_bits(2, 2), kernels.canonical)


def test_the_pi4_keys_the_bit_serial_convs_only():
    """tiled-neon runs W2A2 1x1 convs from ~120 input channels (W2A3, W3A2 from 384) on bit planes; a
    part's key carries exactly those convs' bits, every other conv's at 4."""
    kernels = BitKernels.of_schedule(runs_bitserial, space_keys(SPACE, 32), (2, 3, 4))
    assert {(240, 2, 2), (480, 2, 3), (480, 3, 2)} <= kernels.triples
    assert not any(ch <= 112 for ch, _, _ in kernels.triples) and (240, 3, 2) not in kernels.triples
    assert not BitKernels.of_schedule(None, space_keys(SPACE, 32), (2, 3, 4))  # x86: the bits change nothing
    key = LatencyKey("block", 2, 80, 240, 80, 3, 1, True, "hswish")
    assert kernels.canonical(key, (2, 2, 2, 2, 2, 2)) == (4, 4, 2, 4, 4, 2)  # the expand conv reads 80 channels
    assert kernels.canonical(key, (2, 3, 3, 2, 2, 3)) == ()
    wide = LatencyKey("block", 2, 80, 480, 80, 3, 1, True, "hswish")
    assert [k.bits for k in kernels.variants(wide, 6)] == [(4, 4, 2, 4, 4, 2), (4, 4, 2, 4, 4, 3), (4, 4, 3, 4, 4, 2)]
    assert kernels.variants(LatencyKey("block", 8, 24, 72, 24, 3, 1, True, "relu"), 6) == []


def test_a_bit_keyed_table_round_trips_and_checks_its_kernels(tmp_path):
    kernels = BitKernels.of_schedule(runs_bitserial, space_keys(SPACE, 32), (2, 3, 4))
    table = _table()
    wide = [v for k in space_keys(SPACE, 32) for v in kernels.variants(k, bits_length(k, create_space(SPACE)))]
    table.entries.update({str(k): 0.05 for k in wide})
    table.bit_kernels = kernels
    path = tmp_path / "t.json"
    table.save(path)
    again = LatencyTable.load(path)
    assert again.bit_kernels == kernels and again.bits_matter
    cfg = ArchConfig.largest(SPACE)
    assert again.predict(cfg.with_uniform_bits(2, 2)) < again.predict(cfg)
    data = json.loads(path.read_text())
    del data["bit_kernels"]
    path.write_text(json.dumps(data))
    with pytest.raises(QfaError, match="bits_matter is True but bit_kernels lists 0"):
        LatencyTable.load(path)
    data["bit_kernels"] = [[240, 2]]
    path.write_text(json.dumps(data))
    with pytest.raises(QfaError, match="triples"):
        LatencyTable.load(path)


def test_a_build_measures_the_bit_parts_and_keys_them_where_they_measure_apart():
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.lut import build

    plan = build.BuildPlan("rasp4b-sim", SPACE, 32, fit_samples=3)
    sp, dev = create_space(SPACE), load_device("rasp4b-sim")
    kernels = build._bit_kernels(dev, "tiled-neon", sp, 32)
    assert kernels.triples == BitKernels.of_schedule(runs_bitserial, space_keys(sp, 32), (2, 3, 4)).triples
    assert not build._bit_kernels(load_device("x86-1t"), "tiled-vnni", sp, 32)
    work = build._work_items(plan, sp, kernels)
    assert work.bit_keys and all(k.bits for k in work.bit_keys)
    assert {name for name, _ in work.items} >= {f"part:{k}" for k in work.keys + work.bit_keys}
    assert not any(kernels.variants(k, 6) for k in work.probe_keys)  # probes: where bits change nothing
    rng = random.Random(0)
    latency = {name: rng.uniform(0.5, 1.0) for name, _ in work.items}
    for ratio, keyed in ((1.01, False), (0.9, True)):
        for k in work.bit_keys:
            latency[f"part:{k}"] = ratio * latency[f"part:{replace(k, bits=())}"]
        table = build._fitted_table(work, latency, SPACE, 32, kernels)
        assert table.bits_matter == keyed and (len(table.entries) > len(work.keys)) == keyed
        assert build._bits_probe(work, latency, kernels)["bit_kernels"]["keyed"] == keyed


def test_save_load_round_trip_and_bad_files(tmp_path):
    table = _table()
    table.provenance = {"device": "x86"}
    path = tmp_path / "t.json"
    table.save(path)
    again = LatencyTable.load(path)
    assert again.entries == table.entries and again.scale == 1.5 and again.provenance == {"device": "x86"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QfaError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(QfaError, match="not a qfa-deploy latency table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(QfaError, match="no such"):
        LatencyTable.load(tmp_path / "missing.json")
    del again.entries[next(iter(again.entries))]
    with pytest.raises(QfaError, match="no entry"):
        for seed in range(50):
            again.predict(sample_arch(SPACE, random.Random(seed), resolutions=[32]))


def test_journal_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.append({"item": "a", "median": 1.0})
    journal.append({"item": "b", "median": 2.0})
    with open(journal.path, "ab") as f:
        f.write(b'{"item": "c", "med')  # a kill in the middle of a write
    assert [r["item"] for r in journal.read()] == ["a", "b"]
    journal.append({"item": "c", "median": 3.0})
    assert [r["item"] for r in journal.read()] == ["a", "b", "c"]


@pytest.mark.parametrize("content", [b"precious user data\n", b"precious user data",
                                     b'{"item": "a"}\nnot ours\n{"b": 1}\n', b'{"item": "a"}\n{"torn": \n'])
def test_a_file_that_is_not_a_journal_is_refused_never_cut(tmp_path, content):
    """Only the last line can be torn by a kill, and every record is a JSON object: a user's file at
    OUT.journal was truncated to nothing, then removed by the failing build."""
    journal = Journal(tmp_path / "t.json.journal")
    journal.path.write_bytes(content)
    with pytest.raises(QfaError, match=r"t\.json\.journal:\d: not a journal line"):
        journal.read()
    assert journal.path.read_bytes() == content


def test_fit_correction_recovers_a_linear_relation():
    sums = [1.0, 2.0, 3.0, 5.0]
    scale, offset = fit_correction(sums, [1.2 * s + 0.3 for s in sums])
    assert scale == pytest.approx(1.2) and offset == pytest.approx(0.3)
    assert fit_correction([2.0], [3.0]) == (1.5, 0.0)


def test_validate_refuses_a_device_measuring_another_statistic():
    from qfa_deploy.lut.validate import validate_table

    table = _table()
    table.provenance = {"device": "x86-1t", "protocol": {"statistic": "min"}}
    with pytest.raises(QfaError, match="holds min latencies.*measures the median"):
        validate_table(table, "x86", samples=2, seed=1, progress=False)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, -0.1])
def test_validate_refuses_a_tolerance_out_of_range(tolerance):
    from qfa_deploy.lut.validate import validate_table

    with pytest.raises(QfaError, match="--tolerance must be a percentage between 0 and 100"):
        validate_table(_table(), "x86", samples=2, seed=1, progress=False, tolerance=tolerance)


def test_protocol_latency_is_the_named_statistic():
    from qfa_deploy.deploy.device import MeasureProtocol, load_device

    summary = {"median": 2.0, "min": 1.5, "p10": 1.6}
    assert MeasureProtocol().latency(summary) == 2.0
    assert MeasureProtocol(statistic="min").latency(summary) == 1.5
    assert load_device("x86-1t").protocol.statistic == "min" and load_device("x86").protocol.statistic == "median"


def test_resuming_a_journal_measured_with_another_protocol_is_refused(tmp_path):
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.lut.build import BuildPlan, build_table

    plan = BuildPlan("x86-1t", "qfa-mbv3-cifar10", 32, fit_samples=0)
    header = plan.header(load_device("x86-1t"))
    header["protocol"] = {**header["protocol"], "number": header["protocol"]["number"] + 9}
    out = tmp_path / "t.json"
    Journal(tmp_path / "t.json.journal").append(header)
    with pytest.raises(QfaError, match="differs in protocol"):
        build_table(plan, out, progress=False)
    assert not out.exists()


def test_part_models_fold_the_right_config_when_asked_from_several_threads():
    """Builds with --workers N ask for parts from N threads; each must get its own config's shapes."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from qfa_deploy.lut.parts import PartModels

    models = PartModels(SPACE, 32)
    base = ArchConfig.largest(SPACE)
    n = len(base.kernel)
    cfgs = [replace(base, kernel=(k,) * n, expand=(e,) * n) for k in (3, 5, 7) for e in (3, 6)]

    def kernels(cfg):
        return {block.depthwise.weight.shape[-1] for block in models.folded(cfg).blocks[1:]}

    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(kernels, cfgs))
    assert got == [{c.kernel[0]} for c in cfgs]


def test_part_models_export_the_ops_a_trained_subnet_exports():
    """A table's models stand for trained subnets: the same QDQ ops, type for type. A trained supernet's
    BatchQuant offsets fold to adds (and depthwise bias maps) that an untrained one's would not have:
    without them the Pi 4's parts ran ~10% faster than the deployed subnets."""
    from collections import Counter

    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.evaluate import calibrated_subnet
    from qfa_deploy.export.onnx_export import export_onnx
    from qfa_deploy.fold import fold
    from qfa_deploy.lut.parts import PartModels
    from qfa_deploy.reference import default_checkpoint

    net = load_supernet(default_checkpoint(), SPACE)
    ops = lambda model: Counter(node.op_type for node in model.graph.node)
    for seed in (3, 4):
        cfg = sample_arch(SPACE, random.Random(seed), resolutions=[32])
        trained = ops(export_onnx(fold(calibrated_subnet(net, cfg, None, calib_batches=0))))
        parts = ops(PartModels(SPACE, 32).subnet(cfg))
        assert not trained - parts  # every op of the trained subnet
        # and at most a depthwise conv's offset more (its shift and bias map): a trained offset can fold
        # to none where its fraction is zero
        assert sum((parts - trained).values()) <= 3, parts - trained


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["fit"].update(offset_ms=1e308), "fit.offset_ms = 1e+308 is outside [-100000, 100000]"),
    (lambda d: d["fit"].update(scale=1e308), "fit.scale = 1e+308 is outside [0, 1000]"),
    (lambda d: d["entries"].update({next(iter(d["entries"])): 1e308}), "is outside [0, 100000]"),
])
def test_a_table_beyond_any_measurement_is_refused(tmp_path, change, needle):
    """Values no device measures would overflow the search's latencies (inf ms predicted before)."""
    path = tmp_path / "t.json"
    _table().save(path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(QfaError) as err:
        LatencyTable.load(path)
    assert needle in str(err.value) and str(path) in str(err.value)
