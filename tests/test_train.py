"""Training: exact resume, crash safety, and data-parallel replicas that stay identical."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config, tiny_splits

from qfa_deploy.checkpoint import load_checkpoint
from qfa_deploy.errors import QfaError
from qfa_deploy.train import train

TESTS = Path(__file__).parent


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def splits():
    return tiny_splits()


def test_resume_continues_exactly(tmp_path, splits):
    # 6 steps cross the full-precision -> quantized boundary (3 steps per phase).
    straight = train(tiny_config(str(tmp_path / "a"), max_steps=6), splits=splits)
    train(tiny_config(str(tmp_path / "b"), max_steps=4), splits=splits)
    resumed = train(tiny_config(str(tmp_path / "b"), max_steps=6), resume=True, splits=splits)
    assert resumed.step == straight.step == 6
    assert _same_state(straight.supernet.state_dict(), resumed.supernet.state_dict())
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["optimizer"]["state"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["optimizer"]["state"]
    assert all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a)
    steps = [line for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines() if '"loss_largest"' in line]
    assert len(steps) == len({s.split(",")[0] for s in steps})  # no step logged twice


def test_refuses_to_overwrite_and_to_resume_a_different_run(tmp_path, splits):
    train(tiny_config(str(tmp_path), max_steps=2), splits=splits)
    with pytest.raises(QfaError, match="exists"):
        train(tiny_config(str(tmp_path), max_steps=2), splits=splits)
    with pytest.raises(QfaError, match="batch_size"):
        train(tiny_config(str(tmp_path), max_steps=3, batch_size=16), resume=True, splits=splits)


def test_sigkill_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    code = (
        f"import sys, torch; sys.path.insert(0, {str(TESTS)!r}); torch.set_num_threads(1)\n"
        "from qfa_deploy.train import train\nfrom train_helpers import tiny_config, tiny_splits\n"
        f"train(tiny_config({str(out)!r}, checkpoint_every=1), splits=tiny_splits())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.2)
    time.sleep(1.5)  # kill somewhere inside a later step or checkpoint write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    step = load_checkpoint(ckpt)["step"]
    assert step >= 1
    result = train(tiny_config(str(out), checkpoint_every=1, max_steps=step + 1), resume=True, splits=tiny_splits())
    assert result.step == step + 1
    assert list(out.glob(".checkpoint.pt.*")) == []  # a write torn by the kill is cleaned by the next one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_replicas_stay_identical(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(TESTS / "ddp_worker.py"), str(tmp_path),
    ]
    subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _same_state(r0, r1)
    fresh = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert fresh["step"] == 3


def test_init_from_loads_weights_and_knows_whether_lsq_steps_were_trained(tmp_path, splits):
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.space import create_space
    from qfa_deploy.train import _init_weights

    fp_only = train(tiny_config(str(tmp_path / "fp"), max_steps=2), splits=splits).checkpoint  # fp phase: 3 steps
    quant = train(tiny_config(str(tmp_path / "q"), max_steps=4), splits=splits)
    steps_per_epoch = len(splits.train) // 32

    sp = create_space("qfa-mbv3-cifar10")
    assert not _init_weights(QFASupernet(sp), tiny_config("unused", init_from=str(fp_only)), steps_per_epoch)
    fresh = QFASupernet(sp)
    assert _init_weights(fresh, tiny_config("unused", init_from=str(quant.checkpoint)), steps_per_epoch)
    for name, value in quant.supernet.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name

    extended = train(tiny_config(str(tmp_path / "ext"), init_from=str(quant.checkpoint), fp_epochs=0.0,
                                 max_steps=1), splits=splits)
    assert extended.step == 1
    with pytest.raises(QfaError, match="activation quantizers"):
        train(tiny_config(str(tmp_path / "lsq"), init_from=str(quant.checkpoint), act_quantizer="lsq"),
              splits=splits)
    # A full-precision warm start seeds either activation quantizer (the ablation's shared start).
    lsq = QFASupernet(sp, act_quantizer="lsq")
    assert not _init_weights(lsq, tiny_config("unused", init_from=str(fp_only), act_quantizer="lsq"), steps_per_epoch)
    fp_state = load_checkpoint(fp_only)["model"]
    assert torch.equal(lsq.state_dict()["stem.weight"], fp_state["stem.weight"].float())


def test_a_non_finite_loss_stops_training_and_keeps_the_last_finite_checkpoint(tmp_path, splits):
    out = tmp_path / "run"
    with pytest.raises(QfaError, match="training diverged: loss (nan|inf) at step [1-9]"):
        train(tiny_config(str(out), max_steps=8, checkpoint_every=1, lr=1e30), splits=splits)
    payload = load_checkpoint(out / "checkpoint.pt")  # the steps before the divergence were saved
    assert payload["step"] >= 1
    assert all(torch.isfinite(t).all() for t in payload["model"].values() if t.is_floating_point())
    assert list(out.glob(".checkpoint.pt.*")) == []


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    from qfa_deploy.checkpoint import save_checkpoint

    with pytest.raises(QfaError, match="w holds non-finite values"):
        save_checkpoint(tmp_path / "c.pt", "qfa-mbv3-cifar10", {"w": torch.tensor([1.0, float("nan")])})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    ({"space": "nope"}, "unknown space 'nope'"),
    ({"fp_epochs": 0.0, "q_epochs": 0.0}, "both 0: nothing to train"),
    ({"q_epochs": float("nan")}, "must be non-negative"),
    ({"batch_size": 0}, "--batch-size and --checkpoint-every must be at least 1"),
])
def test_train_config_is_validated_when_made(tmp_path, overrides, message):
    with pytest.raises(QfaError, match=message):
        tiny_config(str(tmp_path), **overrides)
