"""Hostile data sets and journals: a damaged CIFAR-10 (the JPEG .npz or torchvision's folder), a
corrupt ``collect`` record, a foreign ``lut build`` journal. Each is one line on stderr naming the file
and the problem, exit 2, no traceback, nothing written or changed; valid data still loads.

The data cases run ``train`` (it reads the data before any checkpoint or output), the journal cases
fail before the supernet loads: every case takes a fraction of a second after the first.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import invoke_cli
from PIL import Image

from qfa_deploy.arch import sample_arch
from qfa_deploy.data import load_splits
from qfa_deploy.errors import QfaError
from qfa_deploy.search.collect import check_journal, sample_for
from qfa_deploy.space import create_space

CIFAR = "qfa-mbv3-cifar10"
N = 12  # images per split of the tiny data sets


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _npz(path: Path, jpeg=None, offsets=None, y=None) -> None:
    images = _jpegs(N)
    blob = np.frombuffer(b"".join(images), dtype=np.uint8)
    cuts = np.concatenate([[0], np.cumsum([len(b) for b in images])]).astype(np.int64)
    labels = (np.arange(N) % 10).astype(np.uint8)
    np.savez(path, jpeg=blob if jpeg is None else jpeg(blob), offsets=cuts if offsets is None else offsets(cuts),
             y=labels if y is None else y(labels))


def _cifar(root: Path, **edit) -> Path:
    """``root/train.npz`` edited by ``edit`` (see ``_npz``), ``root/test.npz`` a good one."""
    root.mkdir()
    _npz(root / "train.npz", **edit)
    _npz(root / "test.npz")
    return root


def _truncated(root: Path) -> Path:
    _cifar(root)
    data = (root / "train.npz").read_bytes()
    (root / "train.npz").write_bytes(data[: len(data) // 2])
    return root


def _bad_jpeg(blob: np.ndarray) -> np.ndarray:
    blob = blob.copy()
    blob[:64] = 0  # the first image's header: PIL cannot identify it
    return blob


def _torchvision(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root


_TV_NAMES = ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]

DATA_CASES = [
    ("trunc", _truncated, "not a CIFAR-10 .npz"),
    ("badjpeg", lambda r: _cifar(r, jpeg=_bad_jpeg), "image 0 is not a readable JPEG"),
    ("badoffsets", lambda r: _cifar(r, offsets=lambda o: o * 1000), "'offsets' do not cut"),
    ("negoffsets", lambda r: _cifar(r, offsets=lambda o: -o), "'offsets' do not cut"),
    ("fewoffsets", lambda r: _cifar(r, offsets=lambda o: o[:5]), "'offsets' must be 13 integers"),
    ("badlabels", lambda r: _cifar(r, y=lambda y: y + 200), "is outside 0..9"),
    ("neglabels", lambda r: _cifar(r, y=lambda y: y.astype(np.int64) - 1), "is outside 0..9"),
    ("floatlabels", lambda r: _cifar(r, y=lambda y: y.astype(np.float32) + 0.5), "must be a 1-D integer array"),
    ("empty", lambda r: _cifar(r, jpeg=lambda b: b[:0], offsets=lambda o: o[:1], y=lambda y: y[:0]),
     "no images in it (the split is empty)"),
    ("tv_empty", lambda r: _torchvision(r, {}), "torchvision's CIFAR-10 files are missing or corrupt"),
    ("tv_corrupt", lambda r: _torchvision(r, {n: b"\x80\x04garbage" for n in _TV_NAMES}),
     "torchvision's CIFAR-10 files are missing or corrupt"),
]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def invoke(folder: Path, argv: list[str], monkeypatch):
    monkeypatch.delenv("QFA_DATA_DIR", raising=False)
    monkeypatch.setenv("QFA_CACHE_DIR", str(folder / "cache"))
    return invoke_cli(folder, argv, monkeypatch)


def check_refused(result, *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(("make", "fragment"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_a_damaged_data_set_is_one_line_naming_the_file(tmp_path, monkeypatch, make, fragment):
    if fragment.startswith("torchvision"):
        pytest.importorskip("torchvision")
    data = make(tmp_path / "data")
    before = snapshot(tmp_path)
    result = invoke(tmp_path, ["train", "--space", CIFAR, "--batch-size", "8", "--max-steps", "1",
                               "--out", "run", "--data", "data"], monkeypatch)
    line = check_refused(result, fragment)
    assert f"{data.name}/train.npz: " in line or f"{data.name}/cifar-10-batches-py: " in line, line
    assert snapshot(tmp_path) == before  # no run folder, no cache of a broken file


def test_a_damaged_test_split_names_test_npz(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _npz(root / "train.npz")
    _npz(root / "test.npz", y=lambda y: y + 10)
    with pytest.raises(QfaError, match=r"test\.npz: label 10 of image 0 is outside 0\.\.9"):
        load_splits(create_space(CIFAR), root)


def test_valid_tiny_data_still_loads_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QFA_CACHE_DIR", str(tmp_path / "cache"))
    root = _cifar(tmp_path / "data")
    sp = create_space(CIFAR)
    first = load_splits(sp, root)
    assert len(first.val) == N and len(first.test) == N  # fewer images than the validation split: all of them
    assert sorted(first.val.labels.tolist()) == sorted((np.arange(N) % 10).tolist())
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = load_splits(sp, root)  # from the cache
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.test.labels, again.test.labels)


def test_an_unreadable_cache_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("QFA_CACHE_DIR", str(tmp_path / "cache"))
    root = _cifar(tmp_path / "data")
    sp = create_space(CIFAR)
    first = load_splits(sp, root)
    for cached in (tmp_path / "cache").glob("*.npz"):
        cached.write_bytes(b"torn")
    assert torch.equal(load_splits(sp, root).test.images, first.test.images)


# --- collect journals -------------------------------------------------------------------------------

def _record(index: int = 0, **edit) -> dict:
    cfg = sample_for(CIFAR, 0, max(index, 0))
    rec = {"index": index, "space": CIFAR, "seed": 0, "calib_batches": 1, "val_images": 100,
           "checkpoint": "0123456789abcdef", "top1": 0.5, "macs": 1, "bitops": 1.0, "mflops": 1e-6,
           "gbitops": 1e-9, "seconds": 1.0, "digest": cfg.digest(), "arch": cfg.to_dict()}
    rec.update(edit)
    return rec


_OTHER_SPACE_ARCH = sample_arch("qfa-mbv3-w1.2", random.Random(0)).to_dict()

JOURNAL_CASES = [
    ("str_top1", [_record(top1="high")], ":1: 'top1' must be int or float"),
    ("nan_top1", [_record(top1=math.nan)], ":1: 'top1' = nan is not a finite number"),
    ("inf_top1", [_record(top1=math.inf)], ":1: 'top1' = inf is not a finite number"),
    ("big_top1", [_record(top1=5.0)], ":1: 'top1' = 5.0 is outside [0, 1]"),
    ("neg_top1", [_record(top1=-0.1)], ":1: 'top1' = -0.1 is outside [0, 1]"),
    ("no_top1", [_record(top1=None)], ":1: 'top1' must be int or float"),
    ("bad_arch", [_record(arch={"x": 1})], ":1: 'arch' is not a subnet config"),
    ("list_arch", [_record(arch=[1, 2])], ":1: 'arch' is not a subnet config"),
    ("mixed_spaces", [_record(0), _record(1, arch=_OTHER_SPACE_ARCH)],
     ":2: 'arch' is of space 'qfa-mbv3-w1.2', the record's space is 'qfa-mbv3-cifar10'"),
    ("neg_index", [_record(-5)], ":1: 'index' = -5 is negative"),
]


@pytest.mark.parametrize(("records", "fragment"), [c[1:] for c in JOURNAL_CASES], ids=[c[0] for c in JOURNAL_CASES])
def test_a_corrupt_collect_record_is_one_line_naming_file_and_line(tmp_path, monkeypatch, records, fragment):
    out = tmp_path / "acc.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = snapshot(tmp_path)
    result = invoke(tmp_path, ["collect", "--samples", "1", "--calib-batches", "1", "--val-images", "100",
                               "-o", "acc.jsonl", "--data", "nodata"], monkeypatch)
    check_refused(result, "acc.jsonl" + fragment)
    assert snapshot(tmp_path) == before


def test_a_good_journal_with_a_torn_last_line_is_still_resumed(tmp_path):
    out = tmp_path / "acc.jsonl"
    good = json.dumps(_record(0)) + "\n" + json.dumps(_record(1)) + "\n"
    out.write_text(good + json.dumps(_record(2))[:40])  # a run killed mid-write
    records, length = check_journal(out)
    assert [r["index"] for r in records] == [0, 1] and length == len(good.encode())


# --- lut build journals ------------------------------------------------------------------------------

LUT_BUILD = ["lut", "build", "--space", CIFAR, "--resolution", "32", "--device", "x86-1t", "--fit-samples", "0",
             "-o", "t.json"]


@pytest.mark.parametrize(("header", "fragment"), [
    ("[1]", "t.json.journal:1: not a lut build journal (its header is a JSON list"),
    ('"header"', "t.json.journal:1: not a lut build journal (its header is a JSON str"),
    ("7", "t.json.journal:1: not a lut build journal (its header is a JSON int"),
])
def test_a_lut_journal_whose_header_is_not_an_object_is_refused(tmp_path, monkeypatch, header, fragment):
    (tmp_path / "t.json.journal").write_text(header + "\n")
    before = snapshot(tmp_path)
    check_refused(invoke(tmp_path, LUT_BUILD, monkeypatch), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("record", "fragment"), [
    ([1, 2], ":2: not a measurement of this build (the record must be dict"),
    ({"min": 1.0}, ":2: not a measurement of this build ('item' must be str"),
    ({"item": "part:x", "min": "fast"}, ":2: not a measurement of this build ('min' must be int or float"),
    ({"item": "part:x", "min": math.nan}, ":2: not a measurement of this build ('min' = nan is not a finite"),
    ({"item": "part:x", "min": -1.0}, ":2: not a measurement of this build ('min' = -1.0 is outside"),
], ids=["list", "no_item", "str_latency", "nan_latency", "negative_latency"])
def test_a_corrupt_lut_journal_measurement_is_refused(tmp_path, monkeypatch, record, fragment):
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.lut.build import BuildPlan

    dev = load_device("x86-1t")
    assert dev.protocol.statistic == "min"
    header = BuildPlan("x86-1t", CIFAR, 32, fit_samples=0).header(dev)
    (tmp_path / "t.json.journal").write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    before = snapshot(tmp_path)
    check_refused(invoke(tmp_path, LUT_BUILD, monkeypatch), "t.json.journal" + fragment)
    assert snapshot(tmp_path) == before
