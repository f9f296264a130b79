"""The calibration images shipped in the package: the first images of CIFAR-10's fixed validation
split, so that export on a machine without the data set gives the same model as with it."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import EXAMPLES

from qfa_deploy.arch import load_arch
from qfa_deploy.data import CALIBRATION_ASSET, calibration_images, default_data_dir, load_splits
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import asset
from qfa_deploy.space import create_space

CIFAR = create_space("qfa-mbv3-cifar10")
needs_data = pytest.mark.skipif(
    not (default_data_dir() / "train.npz").is_file(), reason="needs the full CIFAR-10 (../shared/data/cifar10)"
)


@pytest.fixture
def no_data_set(monkeypatch, tmp_path):
    """A machine without the data set: no $QFA_DATA_DIR, no shared copy."""
    monkeypatch.delenv("QFA_DATA_DIR", raising=False)
    monkeypatch.setattr("qfa_deploy.data.default_data_dir", lambda: tmp_path / "absent")


def test_shipped_images_cover_the_default_calibration(no_data_set):
    val = calibration_images(CIFAR)
    assert len(val) == 2000  # 20 batches of 100: export's default
    assert val.images.dtype == torch.uint8 and tuple(val.images.shape[1:]) == (32, 32, 3)
    assert set(val.labels.tolist()) == set(range(10))


def test_more_than_shipped_is_one_line(no_data_set):
    with pytest.raises(QfaError, match="ships 2000"):
        calibration_images(CIFAR, images=3000)


def test_a_1000_class_space_needs_its_data(no_data_set):
    with pytest.raises(QfaError, match="no calibration data for space 'qfa-mbv3-w1.2'"):
        calibration_images(create_space("qfa-mbv3-w1.2"))


@needs_data
def test_shipped_file_is_what_the_script_makes():
    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "make_calibration_asset.py"))
    made = script["calibration_subset"](default_data_dir() / "train.npz", 2000)
    with np.load(asset(CALIBRATION_ASSET)) as shipped:
        for name, array in made.items():
            np.testing.assert_array_equal(shipped[name], array)


@needs_data
def test_shipped_and_full_data_set_export_the_same_model(monkeypatch, tmp_path):
    from qfa_deploy.commands.common import load_supernet
    from qfa_deploy.export.artifact import calibrate_for_export
    from qfa_deploy.export.onnx_export import export_onnx
    from qfa_deploy.fold import fold
    from qfa_deploy.reference import default_checkpoint

    full = load_splits(CIFAR).val
    monkeypatch.delenv("QFA_DATA_DIR", raising=False)
    monkeypatch.setattr("qfa_deploy.data.default_data_dir", lambda: tmp_path / "absent")
    shipped = calibration_images(CIFAR)
    assert torch.equal(shipped.images, full.images[:2000]) and torch.equal(shipped.labels, full.labels[:2000])

    net = load_supernet(str(default_checkpoint()))
    cfg = load_arch("export/cifar10-smallest-w2a2.json")
    models = [export_onnx(fold(calibrate_for_export(net, cfg, src, 20))) for src in (full, shipped)]
    assert models[0].SerializeToString() == models[1].SerializeToString()


def test_eval_download_offline_is_one_line_and_leaves_nothing(tmp_path):
    """Without a network (as here and in CI) --download fails in one line, exit 2, no folder left."""
    import socket

    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        pytest.skip("this machine resolves the CIFAR-10 host: the offline case cannot be checked")
    except OSError:
        pass
    from test_cli_errors import run_cli

    target = tmp_path / "cifar"
    arch = EXAMPLES / "cifar10-smallest-w2a2.json"
    result = run_cli(["eval", "--arch", str(arch), "--data", str(target), "--download"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR-10 download failed" in lines[0], result.stderr
    assert not target.exists()
