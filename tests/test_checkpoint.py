"""Checkpoints: atomic save, weights_only load, one-line QfaError for every kind of bad file."""

from __future__ import annotations

import pytest
import torch

from qfa_deploy.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_write_bytes,
    load_checkpoint,
    save_checkpoint,
)
from qfa_deploy.errors import QfaError

CIFAR = "qfa-mbv3-cifar10"
CALLS: list[str] = []


def _side_effect() -> dict:
    """What unpickling a Payload runs; a weights_only load must never get here."""
    CALLS.append("unpickled")
    return {}


class Payload:
    def __reduce__(self):
        return (_side_effect, ())


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "stem.weight": torch.randn(16, 3, 3, 3, generator=g),
        "stem.bn.running_mean": torch.randn(16, generator=g),
        "stem.bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(4, generator=g).half(),
    }


def _one_line_error(path, **kw) -> str:
    with pytest.raises(QfaError) as exc:
        load_checkpoint(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"  # parent created by the writer
    state = _state()
    save_checkpoint(path, CIFAR, state, step=12, act_quantizer="batchquant", train_config={"lr": 0.1})
    payload = load_checkpoint(path, expect_space=CIFAR)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["version"] == CHECKPOINT_VERSION
    assert payload["space"] == CIFAR and payload["step"] == 12 and payload["train_config"] == {"lr": 0.1}
    assert payload["model"].keys() == state.keys()
    for k, v in state.items():
        assert payload["model"][k].dtype == v.dtype and torch.equal(payload["model"][k], v)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_overwrite_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, CIFAR, _state(), step=1)
    before = path.read_bytes()

    def failing_write(f):
        f.write(b"partial data")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, failing_write)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    save_checkpoint(path, CIFAR, _state(), step=2)
    assert load_checkpoint(path)["step"] == 2


def test_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "space": CIFAR, "model": {},
                "extra": Payload()}, path)
    CALLS.clear()
    msg = _one_line_error(path)
    assert CALLS == []  # the pickled call was never made
    assert "not a readable checkpoint" in msg
    assert "_side_effect" in msg  # names what was refused
    # the same file would run code with a full unpickler: the test is meaningful
    torch.load(path, weights_only=False)
    assert CALLS == ["unpickled"]


def test_other_space(tmp_path):
    path = tmp_path / "imagenet.pt"
    save_checkpoint(path, "qfa-mbv3-w1.2", _state())
    msg = _one_line_error(path, expect_space=CIFAR)
    assert "'qfa-mbv3-w1.2'" in msg and f"'{CIFAR}'" in msg
    assert load_checkpoint(path)["space"] == "qfa-mbv3-w1.2"  # fine when no space is expected


def test_version_mismatch(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1, "space": CIFAR,
                "model": _state()}, path)
    msg = _one_line_error(path)
    assert f"version {CHECKPOINT_VERSION + 1}" in msg and f"reads {CHECKPOINT_VERSION}" in msg


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["not a readable checkpoint", "empty"]),
        (bytes(range(256)) * 8, ["not a readable checkpoint", "corrupt"]),
        (b"PK\x03\x04 not really a zip", ["not a readable checkpoint"]),
    ],
    ids=["empty", "random", "fake-zip"],
)
def test_unreadable_files(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    msg = _one_line_error(path)
    for w in words:
        assert w in msg


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, CIFAR, _state())
    path.write_bytes(path.read_bytes()[:300])
    assert "not a readable checkpoint" in _one_line_error(path)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"weights": torch.zeros(2)}, ["not a qfa-deploy supernet checkpoint"]),
        ([torch.zeros(2)], ["not a qfa-deploy supernet checkpoint"]),
        ({"format": CHECKPOINT_FORMAT, "version": 1, "space": CIFAR}, ["no model weights"]),
        (
            {"format": CHECKPOINT_FORMAT, "version": 1, "space": CIFAR, "model": {"w": [1, 2]}},
            ["no model weights"],
        ),
        ({"format": CHECKPOINT_FORMAT, "version": 1, "model": {}}, ["names no search space"]),
    ],
    ids=["foreign-dict", "list", "no-model", "model-not-tensors", "no-space"],
)
def test_foreign_payloads(tmp_path, payload, words):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    msg = _one_line_error(path)
    for w in words:
        assert w in msg


def test_missing_and_directory(tmp_path):
    assert "no such checkpoint" in _one_line_error(tmp_path / "nope.pt")
    assert "no such checkpoint" in _one_line_error(tmp_path)


def test_release_script_keeps_the_model_in_fp16_and_drops_the_optimiser(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from qfa_deploy.commands.common import load_supernet
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.space import create_space

    net = QFASupernet(create_space(CIFAR))
    run = tmp_path / "checkpoint.pt"
    save_checkpoint(run, CIFAR, net.state_dict(), optimizer={"state": {}}, step=12, act_quantizer="batchquant",
                    train_config={"space": CIFAR})
    script = Path(__file__).resolve().parents[1] / "scripts" / "release_checkpoint.py"
    done = subprocess.run([sys.executable, str(script), str(run), str(tmp_path / "out.pt"), "--notes", "n"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    released = load_checkpoint(tmp_path / "out.pt", expect_space=CIFAR)
    assert "optimizer" not in released and released["step"] == 12 and released["notes"] == "n"
    floats = [v for v in released["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert set(released["model"]) == set(net.state_dict())
    loaded = load_supernet(str(tmp_path / "out.pt"))
    assert torch.equal(loaded.state_dict()["stem.weight"], net.state_dict()["stem.weight"].half().float())
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "none.pt"), str(tmp_path / "x.pt")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "no such checkpoint" in bad.stderr
    assert not (tmp_path / "x.pt").exists()
