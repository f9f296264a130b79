"""Hostile checkpoints: every malformed field, key, shape, dtype or non-finite value is one QfaError line
naming the file and the problem (exit 2 on the command line, no traceback), refused on load before
any work and before anything is written; valid checkpoints still load.

Each file is the embedded checkpoint (or a tiny training run's, built without training) with one edit.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from deploy_helpers import invoke_cli
from train_helpers import tiny_config, tiny_splits

from qfa_deploy.arch import sample_arch
from qfa_deploy.checkpoint import first_non_finite, load_checkpoint, load_supernet, save_checkpoint
from qfa_deploy.errors import QfaError
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.reference import default_checkpoint
from qfa_deploy.train import _init_weights, train

CIFAR = "qfa-mbv3-cifar10"


@pytest.fixture(scope="module")
def good() -> dict:
    return torch.load(default_checkpoint(), map_location="cpu", weights_only=True)


def _variant(good: dict, path: Path, edit) -> Path:
    """``good`` with its top level and model copied, ``edit``ed, saved at ``path``."""
    payload = dict(good)
    payload["model"] = dict(good["model"])
    if isinstance(payload.get("train_config"), dict):
        payload["train_config"] = dict(payload["train_config"])
    edit(payload)
    torch.save(payload, path)
    return path


def _refused(fn, path: Path, *fragments: str) -> str:
    with pytest.raises(QfaError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


def _set_model(key, make):
    return lambda p: p["model"].__setitem__(key, make(p["model"]))


def _nan_like(key):
    return _set_model(key, lambda m: torch.full_like(m[key], float("nan")))


# (id, edit, fragments of the one error line); found by load_checkpoint itself, for every command
LOAD_CASES = [
    ("actq-list", _set("act_quantizer", ["lsq"]), ["unknown activation quantizer ['lsq']"]),
    ("actq-none", _set("act_quantizer", None), ["unknown activation quantizer None"]),
    ("actq-bogus", _set("act_quantizer", "bogus"), ["unknown activation quantizer 'bogus'"]),
    ("model-intkey", _set_model(5, lambda m: torch.zeros(1)), ["model weight key 5 is not a name"]),
    ("model-tuplekey", _set_model(("a", 1), lambda m: torch.zeros(1)), ["model weight key ('a', 1)"]),
    ("model-nan", _nan_like("classifier.weight"), ["'classifier.weight'", "non-finite"]),
    ("model-inf", _set_model("stem.weight", lambda m: m["stem.weight"].float().index_fill(0, torch.tensor([3]),
                                                                                             float("-inf"))),
     ["'stem.weight'", "non-finite"]),
    ("model-nan-buffer", _nan_like("stem.bn.running_var"), ["'stem.bn.running_var'", "non-finite"]),
    ("model-allnan", lambda p: p.__setitem__("model", {k: torch.full_like(v, float("nan"))
                                                       if v.is_floating_point() else v
                                                       for k, v in p["model"].items()}),
     ["'stem.weight'", "non-finite"]),  # the first offending tensor
    ("model-sparse", _set_model("stem.bn.bias", lambda m: m["stem.bn.bias"].float().to_sparse()),
     ["'stem.bn.bias' is not a dense tensor"]),
    ("step-str", _set("step", "abc"), ["step 'abc' is not a non-negative integer"]),
    ("step-neg", _set("step", -1), ["step -1"]),
    ("step-bool", _set("step", True), ["step True"]),
    ("step-tensor", _set("step", torch.ones(3, 3)), ["step tensor("]),
    ("train-config-list", _set("train_config", [1, 2]), ["train_config is not a table"]),
    ("version-tensor", _set("version", torch.ones(5, 5)), ["checkpoint format version tensor("]),
]


@pytest.mark.parametrize(("edit", "fragments"), [c[1:] for c in LOAD_CASES], ids=[c[0] for c in LOAD_CASES])
def test_malformed_checkpoints_are_refused_on_load(good, tmp_path, edit, fragments):
    path = _variant(good, tmp_path / "bad.pt", edit)
    _refused(lambda: load_checkpoint(path), path, *fragments)
    _refused(lambda: load_supernet(path), path, *fragments)


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (_set_model("stem.weight", lambda m: torch.zeros(1)), ["stem.weight: shape [1], expected [16, 3, 3, 3]"]),
        (_set_model("stem.weight", lambda m: m["stem.weight"].to(torch.int32)), ["stem.weight: int32 values"]),
        (_set_model("stem.bn.num_batches_tracked", lambda m: torch.tensor(1.5)),
         ["stem.bn.num_batches_tracked: float32 values, expected int64"]),
        (lambda p: p["model"].pop("classifier.bias"), ["missing 'classifier.bias'"]),
        (_set_model("bogus.weight", lambda m: torch.zeros(1)), ["unexpected 'bogus.weight'"]),
    ],
    ids=["shape", "int-dtype", "float-counter", "missing", "unexpected"],
)
def test_weights_that_do_not_fit_the_supernet_name_the_first_one(good, tmp_path, edit, fragments):
    path = _variant(good, tmp_path / "bad.pt", edit)
    load_checkpoint(path)  # a well-formed file: only the supernet can tell
    _refused(lambda: load_supernet(path), path, "weights do not match the 'qfa-mbv3-cifar10' supernet", *fragments)
    # --init-from reads it the same way: whole (a quantized run), or but its activation quantizers (warm start)
    cfg = tiny_config("unused", init_from=str(path))
    _refused(lambda: _init_weights(QFASupernet(CIFAR), cfg, 10), path, "weights do not match", *fragments)
    warm = _variant(good, tmp_path / "warm.pt", lambda p: (edit(p), p.__setitem__("step", 0)))
    cfg = tiny_config("unused", init_from=str(warm), act_quantizer="lsq")
    _refused(lambda: _init_weights(QFASupernet(CIFAR, act_quantizer="lsq"), cfg, 10), warm, *fragments)


def test_valid_checkpoints_still_load(good, tmp_path):
    net = load_supernet(default_checkpoint())
    assert torch.equal(net.state_dict()["stem.weight"], good["model"]["stem.weight"].float())
    # large but finite fp16 values (their norm overflows fp16) are not mistaken for infinities
    big = {"a": torch.full((1000,), 60000.0, dtype=torch.float16), "n": torch.tensor(3), "e": torch.empty(0)}
    assert first_non_finite(big) is None
    assert first_non_finite({**big, "b": torch.tensor([1.0, float("nan")], dtype=torch.float64)}) == "b"
    path = _variant(good, tmp_path / "plain.pt", lambda p: [p.pop(k) for k in ("step", "train_config", "notes")])
    assert load_supernet(path).act_quantizer == "batchquant"
    assert _init_weights(QFASupernet(CIFAR), tiny_config("unused", init_from=str(path)), 10)


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (_set("step", "abc"), ["step 'abc'"]),
        (lambda p: p["train_config"].__setitem__("fp_epochs", "x"), ["train_config fp_epochs 'x' is not a number"]),
        (lambda p: p["train_config"].__setitem__("fp_epochs", float("nan")), ["fp_epochs nan"]),
        (lambda p: p["train_config"].__setitem__("fp_epochs", [1]), ["fp_epochs [1]"]),
    ],
    ids=["step-str", "fp-str", "fp-nan", "fp-list"],
)
def test_init_from_metadata_of_the_wrong_type(good, tmp_path, edit, fragments):
    path = _variant(good, tmp_path / "bad.pt", edit)
    cfg = tiny_config("unused", init_from=str(path))
    _refused(lambda: _init_weights(QFASupernet(CIFAR), cfg, 10), path, *fragments)


# ---- --resume: a run folder written without training (a step's worth of optimiser state) ----


@pytest.fixture(scope="module")
def splits():
    return tiny_splits()


def _run_folder(out: Path, edit=None):
    """A run folder at step 1 as ``train`` writes it; ``edit(payload)`` before saving."""
    cfg = tiny_config(str(out), max_steps=1)
    torch.manual_seed(0)
    net = QFASupernet(CIFAR, act_quantizer=cfg.act_quantizer)
    opt = torch.optim.SGD(net.param_groups(cfg.weight_decay), lr=cfg.lr, momentum=0.9, nesterov=True)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # momentum buffers for every parameter
    save_checkpoint(out / "checkpoint.pt", CIFAR, net.state_dict(), optimizer=opt.state_dict(), step=1,
                    train_config=asdict(cfg), act_quantizer=cfg.act_quantizer)
    if edit is not None:  # what save_checkpoint would refuse to write (non-finite weights) included
        payload = torch.load(out / "checkpoint.pt", weights_only=True)
        edit(payload)
        torch.save(payload, out / "checkpoint.pt")
    return cfg


def _first_state(p):
    return next(iter(p["optimizer"]["state"].values()))


RESUME_CASES = [
    ("no-optimizer", lambda p: p.pop("optimizer"), ["optimizer state missing"]),
    ("optimizer-list", _set("optimizer", [1, 2]), ["optimizer state is a list"]),
    ("optimizer-no-groups", _set("optimizer", {"state": {}}), ["no list of parameter groups"]),
    ("optimizer-no-state", lambda p: p["optimizer"].pop("state"), ["no per-parameter state"]),
    ("optimizer-one-group", lambda p: p["optimizer"].__setitem__("param_groups", p["optimizer"]["param_groups"][:1]),
     ["1 parameter groups, this run's optimiser 2"]),
    ("optimizer-short-group", lambda p: p["optimizer"]["param_groups"][0]["params"].pop(),
     ["group 0 has"]),
    ("optimizer-str-ids", lambda p: p["optimizer"]["param_groups"][0].__setitem__("params", "abc"),
     ["group 0 lists no parameter ids"]),
    ("optimizer-momentum-str", lambda p: p["optimizer"]["param_groups"][0].__setitem__("momentum", "x"),
     ["group 0: 'momentum' is 'x'"]),
    ("optimizer-unknown-param", lambda p: p["optimizer"]["state"].__setitem__(10**6, {}),
     ["parameter 1000000"]),
    ("momentum-shape", lambda p: _first_state(p).__setitem__("momentum_buffer", torch.zeros(2)),
     ["momentum_buffer of parameter 0", "shape [2]"]),
    ("momentum-nan", lambda p: _first_state(p).__setitem__("momentum_buffer",
                                                            _first_state(p)["momentum_buffer"] + float("nan")),
     ["momentum_buffer of parameter 0 holds non-finite values"]),
    ("momentum-str", lambda p: _first_state(p).__setitem__("momentum_buffer", "x"),
     ["momentum_buffer of parameter 0 is 'x'"]),
    ("no-step", lambda p: p.pop("step"), ["no training step recorded"]),
    ("step-str", _set("step", "x"), ["step 'x' is not a non-negative integer"]),
    ("step-float", _set("step", 1.0), ["step 1.0"]),
    ("model-nan", lambda p: p.__setitem__("model", {
        k: v + float("nan") if v.is_floating_point() else v
        for k, v in QFASupernet(CIFAR).state_dict().items()}), ["non-finite"]),
    ("model-shape", lambda p: p.__setitem__("model", {
        **QFASupernet(CIFAR).state_dict(), "stem.weight": torch.zeros(2)}), ["stem.weight: shape [2]"]),
    ("config-tensor", lambda p: p["train_config"].__setitem__("lr", torch.ones(4, 4)),
     ["cannot resume: lr was tensor("]),
    ("config-other-lr", lambda p: p["train_config"].__setitem__("lr", 0.5), ["cannot resume: lr was 0.5"]),
    ("config-list", _set("train_config", ["x"]), ["train_config is not a table"]),
]


@pytest.mark.parametrize(("edit", "fragments"), [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_a_malformed_resume_checkpoint_is_refused_and_kept(tmp_path, splits, edit, fragments):
    out = tmp_path / "run"
    cfg = _run_folder(out, edit)
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    _refused(lambda: train(cfg, resume=True, splits=splits), ckpt, *fragments)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no log, no config written
    assert ckpt.read_bytes() == before


def test_a_valid_resume_checkpoint_still_resumes(tmp_path, splits):
    cfg = _run_folder(tmp_path / "run")
    assert train(cfg, resume=True, splits=splits).step == 1
    result = train(replace(cfg, max_steps=2), resume=True, splits=splits)  # one real step from it
    assert result.step == 2


# ---- the command line: exit 2, one line, no traceback, nothing written ----


def _check_cli_refused(result, *fragments: str) -> None:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout and "Warning" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize(
    ("verb", "edit", "fragments"),
    [
        ("export", _set("act_quantizer", ["lsq"]), ["unknown activation quantizer"]),
        ("export", _set_model(5, lambda m: torch.zeros(1)), ["key 5 is not a name"]),
        ("export", _nan_like("stem.weight"), ["'stem.weight' holds non-finite values"]),
        ("export", _set_model("stem.weight", lambda m: torch.full_like(m["stem.weight"], float("inf"))),
         ["'stem.weight' holds non-finite values"]),
        ("export", _set_model("stem.weight", lambda m: m["stem.weight"].to(torch.int32)), ["int32 values"]),
        ("export", _set_model("stem.bn.bias", lambda m: m["stem.bn.bias"].float().to_sparse()), ["not a dense"]),
        ("eval", _nan_like("stem.bn.running_mean"), ["'stem.bn.running_mean' holds non-finite values"]),
        ("collect", _nan_like("stem.weight"), ["non-finite"]),
        ("train", _set_model("stem.weight", lambda m: torch.zeros(1)), ["stem.weight: shape [1]"]),
    ],
    ids=["export-actq-list", "export-intkey", "export-nan", "export-inf", "export-int-dtype", "export-sparse",
         "eval-nan-buffer",
         "collect-nan", "train-init-shape"],
)
def test_the_command_line_refuses_in_one_line(good, tmp_path, monkeypatch, verb, edit, fragments):
    path = _variant(good, tmp_path / "bad.pt", edit)
    (tmp_path / "arch.json").write_text(json.dumps(sample_arch(CIFAR, random.Random(1)).to_dict()))
    argv = {
        "export": ["export", "--arch", "arch.json", "--calib-batches", "0", "--checkpoint", str(path), "--out", "exp"],
        "eval": ["eval", "--arch", "arch.json", "--calib-batches", "0", "--limit", "10", "--checkpoint", str(path)],
        "collect": ["collect", "--samples", "1", "--calib-batches", "1", "--val-images", "100", "-o", "acc.jsonl",
                    "--checkpoint", str(path)],
        "train": ["train", "--space", CIFAR, "--batch-size", "8", "--max-steps", "1", "--out", "run",
                  "--init-from", str(path)],
    }[verb]
    before = sorted(p.name for p in tmp_path.iterdir())
    _check_cli_refused(invoke_cli(tmp_path, argv, monkeypatch), str(path), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
