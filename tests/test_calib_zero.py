"""``--calib-batches 0`` of ``export`` and ``eval``: the checkpoint's stored BN and BatchQuant statistics
are used unchanged and no calibration data is read.

"No data is read" is checked by making every calibration loader raise; "unchanged" by comparing the
subnet (and the exported constants) with ``extract`` of the stored supernet, and by checking that one
calibration batch does change them.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import qfa_deploy.data
from qfa_deploy.arch import sample_arch
from qfa_deploy.checkpoint import save_checkpoint
from qfa_deploy.cli import cli
from qfa_deploy.data import default_data_dir
from qfa_deploy.evaluate import accuracy, calibrated_subnet
from qfa_deploy.export.onnx_export import export_onnx
from qfa_deploy.export.verify import compare_constants, ort_runner
from qfa_deploy.extract import extract
from qfa_deploy.fold import fold

SPACE = "qfa-mbv3-cifar10"


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("calibration data was read")

    monkeypatch.setattr(qfa_deploy.data, "calibration_images", refuse)


@pytest.fixture(scope="module")
def stored(tmp_path_factory, cifar_supernet):
    """A checkpoint with non-default statistics, its supernet and a config."""
    d = tmp_path_factory.mktemp("calib0")
    net = copy.deepcopy(cifar_supernet)
    cfg = sample_arch(SPACE, random.Random(11))
    save_checkpoint(d / "ckpt.pt", SPACE, net.state_dict(), act_quantizer="batchquant")
    (d / "cfg.json").write_text(cfg.to_json())
    return d, net, cfg


def test_zero_batches_keeps_the_stored_statistics(stored):
    _, net, cfg = stored
    net = copy.deepcopy(net)
    subnet = calibrated_subnet(net, cfg, None, 0)
    assert not subnet.training
    net.set_active(cfg)
    assert _states_equal(subnet, extract(net, cfg))
    # one batch of calibration does change them (so the equality above is not vacuous)
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(8, dtype=torch.long)
    source = qfa_deploy.data.ArraySource(images, labels, net.space.image_mean, net.space.image_std)
    assert not _states_equal(calibrated_subnet(net, cfg, source, 1, batch_size=8), subnet)
    with pytest.raises(ValueError):
        calibrated_subnet(net, cfg, None, -1)


def test_export_with_zero_batches_reads_no_data(stored, tmp_path, monkeypatch):
    d, net, cfg = stored
    _no_data(monkeypatch)
    monkeypatch.setenv("QFA_DATA_DIR", str(tmp_path / "no-such-data"))
    out = tmp_path / "art"
    result = CliRunner().invoke(cli, [
        "export", "--checkpoint", str(d / "ckpt.pt"), "--arch", str(d / "cfg.json"),
        "--calib-batches", "0", "--out", str(out),
    ])
    assert result.exit_code == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration"]["batches"] == 0 and meta["calibration"]["statistics"] == "stored"
    assert meta["calibration"]["images"] == 0 and meta["calibration"]["data_dir"] is None

    import onnx

    model = onnx.load(str(out / "model.onnx"))
    net = copy.deepcopy(net)
    net.set_active(cfg)
    subnet = extract(net, cfg).eval()
    assert compare_constants(model, export_onnx(fold(subnet), opset=model.opset_import[0].version))["identical"]
    x = torch.randn(4, 3, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = subnet(x).numpy()
    got = ort_runner(model, optimize=False)(x.numpy())[0]
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max())), np.abs(got - ref).max()


def test_export_help_says_what_zero_means():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert "0: no calibration" in " ".join(result.stdout.split())


def test_eval_with_zero_batches_uses_stored_statistics(stored, monkeypatch):
    data = os.environ.get("QFA_DATA_DIR") or str(default_data_dir())
    if not (Path(data) / "test.npz").is_file():
        pytest.skip(f"no CIFAR-10 test split in {data}")
    d, net, cfg = stored
    _no_data(monkeypatch)
    result = CliRunner().invoke(cli, [
        "eval", "--checkpoint", str(d / "ckpt.pt"), "--arch", str(d / "cfg.json"), "--data", data,
        "--calib-batches", "0", "--limit", "200", "--json",
    ])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calib_batches"] == 0 and report["images"] == 200
    net = copy.deepcopy(net)
    net.set_active(cfg)
    test = qfa_deploy.data.load_splits(net.space, data).test.subset(200)
    assert report["top1"] == accuracy(extract(net, cfg), test, cfg.resolution)
