"""Hostile input to every command: exit 2, one line on stderr, no traceback, nothing written or changed.

One small folder of good and bad inputs (and of outputs that already exist) is built once; every case
runs in it, in-process through click's runner (the same group and error path as the console script;
``test_cli_errors`` runs a few through the real script), and the folder is snapshot before and after:
a new file, a removed one, a changed byte or a touched mtime fails the case. Each case must fail
before any expensive work, so the whole table takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qfa_deploy.arch import sample_arch

CIFAR = "qfa-mbv3-cifar10"
SHIPPED_TABLE = Path(__file__).parents[1] / "qfa_deploy" / "assets" / "latency_tables" / (
    "x86-1t-qfa-mbv3-cifar10-r32.json"
)


def _table_variant(d: Path, name: str, edit) -> None:
    data = json.loads(SHIPPED_TABLE.read_text())
    text = edit(data)
    (d / name).write_text(text if isinstance(text, str) else json.dumps(data))


def _artifact(d: Path, name: str, good_arch: dict, edit) -> None:
    meta = {
        "format": "qfa-artifact", "version": 1, "target": "onnx", "space": CIFAR, "arch": good_arch,
        "checkpoint": {"path": str(d / "gone.pt"), "sha256": "0" * 64},
        "calibration": {"batches": 1, "batch_size": 100, "data_dir": None},
        "files": {}, "onnx": {"file": "model.onnx"},
    }
    (d / name).mkdir()
    onnx_bytes = _tiny_onnx() if name != "art_corrupt_onnx" else b"\x08\xff\xff not a protobuf"
    (d / name / "model.onnx").write_bytes(onnx_bytes)
    if name == "art_corrupt_onnx":  # the sha256 matches: only reading the model can tell
        meta["files"] = {"model.onnx": hashlib.sha256(onnx_bytes).hexdigest()}
    text = edit(meta)
    (d / name / "meta.json").write_text(text if isinstance(text, str) else json.dumps(meta))


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    return helper.make_model(graph).SerializeToString()


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """Good and bad inputs, plus outputs that exist already (read only for every case)."""
    from qfa_deploy.search.cost import CostModel
    from qfa_deploy.search.genome import GenomeSpace
    from qfa_deploy.search.predictor import fit_predictor

    d = tmp_path_factory.mktemp("hostile")
    good = sample_arch(CIFAR, random.Random(1)).to_dict()
    (d / "good.json").write_text(json.dumps(good))
    text = json.dumps({**good, "resolution": 12345})
    (d / "nan.json").write_text(text.replace("12345", "NaN"))
    (d / "inf.json").write_text(text.replace("12345", "1e999"))
    (d / "huge.json").write_text(text.replace("12345", "9" * 5000))
    (d / "neginf.json").write_text(text.replace("12345", "-Infinity"))

    _table_variant(d, "table_nan.json", lambda t: t["entries"].update({next(iter(t["entries"])): 12345.678})
                   or json.dumps(t).replace("12345.678", "NaN"))
    _table_variant(d, "table_neg.json", lambda t: t["entries"].update({next(iter(t["entries"])): -1.0}))
    _table_variant(d, "table_bigint.json", lambda t: json.dumps(t).replace('"resolution": 32',
                                                                           '"resolution": ' + "7" * 40))
    _table_variant(d, "table_inf.json", lambda t: json.dumps(t).replace('"scale": ', '"scale": 1e999, "_": ', 1))
    _table_variant(d, "table_types.json", lambda t: t.update(entries=[1, 2, 3]))

    g = GenomeSpace(CIFAR)
    G = g.random(40, np.random.default_rng(0))
    y = 0.5 + 0.01 * np.log(CostModel(g).bitops(G)) + np.random.default_rng(1).normal(0, 0.002, len(G))
    fit_predictor(CIFAR, G, y, ensemble=1, hidden=16, max_epochs=3, seed=0).save(d / "pred.pt")
    payload = torch.load(d / "pred.pt", weights_only=True)
    first = next(iter(payload["members"][0]))
    payload["members"][0][first] = torch.full_like(payload["members"][0][first], float("nan"))
    torch.save(payload, d / "pred_nan.pt")

    records = [{"index": i, "arch": sample_arch(CIFAR, random.Random(i)).to_dict(), "top1": 0.5 + i / 100}
               for i in range(6)]
    (d / "acc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "acc_nan.jsonl").write_text("".join(json.dumps({**r, "top1": float("nan")}) + "\n" for r in records))
    (d / "acc_inf.jsonl").write_text("".join(json.dumps(r).replace('"top1": ', '"top1": 1e999, "_": ')
                                             + "\n" for r in records))
    (d / "acc_range.jsonl").write_text("".join(json.dumps({**r, "top1": 42}) + "\n" for r in records))
    (d / "foreign_data").mkdir()  # .npz files, but not CIFAR-10's
    np.savez(d / "foreign_data" / "train.npz", a=np.zeros(3))
    np.savez(d / "foreign_data" / "test.npz", b=np.ones(2))
    (d / "foreign.txt").write_text("a file of someone else's: collect must not truncate it")

    _artifact(d, "art_files_list", good, lambda m: m.update(files=["model.onnx"]))
    _artifact(d, "art_no_checkpoint", good, lambda m: m.pop("checkpoint"))
    _artifact(d, "art_batches", good, lambda m: m["calibration"].update(batches="many"))
    _artifact(d, "art_nan", good, lambda m: json.dumps(m).replace('"batch_size": 100', '"batch_size": NaN'))
    _artifact(d, "art_escape", good, lambda m: m.update(files={"../good.json": "0" * 64}))
    _artifact(d, "art_ckpt_type", good, lambda m: m["checkpoint"].update(sha256=7))
    _artifact(d, "art_gone", good, lambda m: None)
    _artifact(d, "art_corrupt_onnx", good, lambda m: None)

    profile = json.loads((Path(__file__).parents[1] / "qfa_deploy" / "assets" / "devices" / "x86-1t.json").read_text())
    dev_text = json.dumps({**profile, "threads": 12345})
    (d / "dev_nan.json").write_text(dev_text.replace("12345", "NaN"))
    (d / "dev_huge.json").write_text(dev_text.replace("12345", "9" * 5000))
    (d / "dev_type.json").write_text(dev_text.replace("12345", '"four"'))
    (d / "dev_list.json").write_text("[1, 2, 3]")
    (d / "taken.json").write_text('{"an": "existing output"}\n')
    (d / "taken_dir").mkdir()
    (d / "taken_dir" / "keep.txt").write_text("existing folder output\n")
    (d / "model.onnx").write_bytes(b"not really onnx, never read: the cases fail before")
    (d / "tiny.onnx").write_bytes(_tiny_onnx())  # a valid model: only the output or device can be refused

    # files of the wrong shape where a file or folder is expected
    (d / "trunc.json").write_text((d / "good.json").read_text()[:40])
    (d / "list.json").write_text("[1, 2]")
    (d / "empty.json").write_text("")
    (d / "wrongtype.json").write_text(json.dumps({**good, "resolution": "32"}))
    (d / "w12.json").write_text(json.dumps(sample_arch("qfa-mbv3-w1.2", random.Random(1)).to_dict()))
    (d / "acc_w12.jsonl").write_text(json.dumps({"index": 0, "top1": 0.5, "arch": sample_arch(
        "qfa-mbv3-w1.2", random.Random(2)).to_dict()}) + "\n")
    (d / "acc_trunc.jsonl").write_text((d / "acc.jsonl").read_text()[:300])
    os.symlink("loop_b", d / "loop_a")
    os.symlink("loop_a", d / "loop_b")
    os.mkfifo(d / "fifo")  # never opened by any case: reading one would wait for a writer
    rpc = json.loads((Path(__file__).parents[1] / "qfa_deploy" / "assets" / "devices" / "rasp4b.json").read_text())
    (d / "dev_dead.json").write_text(json.dumps({**rpc, "name": "deadpi", "runner": {**rpc["runner"], "port": 1}}))
    from qfa_deploy.checkpoint import save_checkpoint

    save_checkpoint(d / "w12.pt", "qfa-mbv3-w1.2", {"w": torch.zeros(2)})  # a checkpoint of another space
    torch.save({"a": 1}, d / "plain.pt")  # a PyTorch file, not a checkpoint
    for name, text in (("art_trunc", '{"format": "qfa-artif'), ("art_list", "[]")):
        (d / name).mkdir()
        (d / name / "meta.json").write_text(text)
    return d


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (hidden ones too): kind, size, mtime and a regular file's bytes
    (a FIFO or a symlink loop is not opened)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                                               p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


S = ["search", "--predictor", "pred.pt"]
LV = ["lut", "validate", "--table", str(SHIPPED_TABLE), "--device", "x86-1t"]
TRAIN = ["train", "--space", CIFAR, "--out", "run"]
EXPORT = ["export", "--arch", "good.json", "--out", "exp"]
COLLECT = ["collect", "--samples", "2", "-o", "acc_new.jsonl"]
SAMPLE = ["sample", "--space", CIFAR, "--seed", "1"]
UNWRITABLE = "/proc"  # exists, and nobody (root neither) may create a file in it: read-only outputs
FIT = ["predictor", "fit", "acc.jsonl"]
BUILD = ["lut", "build", "--device", "x86-1t", "--space", CIFAR, "--resolution", "32"]

# (case id, argv run in the layout folder, a fragment the one error line must contain)
CASES = [
    # sample / info
    ("sample-exists", ["sample", "--space", CIFAR, "--seed", "1", "-o", "taken.json"], "--force"),
    ("sample-no-parent", ["sample", "--space", CIFAR, "--seed", "1", "-o", "nodir/x.json"], "no such folder"),
    ("sample-into-dir", ["sample", "--space", CIFAR, "--seed", "1", "-o", "taken_dir"], "is a directory"),
    ("sample-bits-text", ["sample", "--space", CIFAR, "--max", "--bits", "four"], "--bits"),
    ("sample-space", ["sample", "--space", "resnet", "-o", "x.json"], "unknown space"),
    ("info-nan", ["info", "nan.json"], "non-finite number (NaN)"),
    ("info-1e999", ["info", "inf.json"], "out of range"),
    ("info-huge-int", ["info", "huge.json"], "5000 digits"),
    ("info-neg-inf", ["info", "neginf.json"], "-Infinity"),
    # train / eval
    ("train-batch-0", [*TRAIN, "--batch-size", "0"], "--batch-size"),
    ("train-batch-huge", [*TRAIN, "--batch-size", "9" * 40], "--batch-size"),
    ("train-ckpt-every-0", [*TRAIN, "--checkpoint-every", "0"], "--checkpoint-every"),
    ("train-max-steps-0", [*TRAIN, "--max-steps", "0"], "--max-steps"),
    ("train-max-steps-neg", [*TRAIN, "--max-steps", "-5"], "--max-steps"),
    ("train-fp-epochs-neg", [*TRAIN, "--fp-epochs", "-1"], "--fp-epochs"),
    ("train-q-epochs-nan", [*TRAIN, "--q-epochs", "nan"], "--q-epochs"),
    ("train-no-epochs", [*TRAIN, "--fp-epochs", "0", "--q-epochs", "0"], "nothing to train"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], "--lr"),
    ("train-lr-zero", [*TRAIN, "--lr", "0"], "--lr"),
    ("train-q-lr-inf", [*TRAIN, "--q-lr", "inf"], "--q-lr"),
    ("train-threads-0", [*TRAIN, "--threads", "0"], "--threads"),
    ("train-num-random-neg", [*TRAIN, "--num-random", "-1"], "--num-random"),
    ("train-workers-neg", [*TRAIN, "--data-workers", "-2"], "--data-workers"),
    ("eval-calib-neg", ["eval", "--arch", "good.json", "--calib-batches", "-1"], "--calib-batches"),
    ("eval-nan-arch", ["eval", "--arch", "nan.json"], "NaN"),
    ("eval-threads-neg", ["eval", "--arch", "good.json", "--threads", "-4"], "--threads"),
    # export / verify
    ("export-exists", [*EXPORT[:-1], "taken_dir"], "--force"),
    ("export-calib-neg", [*EXPORT, "--calib-batches", "-1"], "--calib-batches"),
    ("export-threads-0", [*EXPORT, "--threads", "0"], "--threads"),
    ("export-nan-arch", ["export", "--arch", "nan.json", "--out", "exp"], "NaN"),
    ("export-device", [*EXPORT, "--target", "nosuch-board"], "unknown device"),
    ("verify-limit-0", ["verify", "art_gone", "--limit", "0"], "--limit"),
    ("verify-agreement-2", ["verify", "art_gone", "--min-agreement", "2"], "--min-agreement"),
    ("verify-agreement-nan", ["verify", "art_gone", "--min-agreement", "nan"], "--min-agreement"),
    ("verify-threads-0", ["verify", "art_gone", "--threads", "0"], "--threads"),
    ("verify-files-list", ["verify", "art_files_list"], "files must be dict"),
    ("verify-no-checkpoint", ["verify", "art_no_checkpoint"], "missing field 'checkpoint'"),
    ("verify-batches-text", ["verify", "art_batches"], "calibration.batches must be int"),
    ("verify-nan-meta", ["verify", "art_nan"], "NaN"),
    ("verify-escape", ["verify", "art_escape"], "not a path inside the artifact"),
    ("verify-sha-type", ["verify", "art_ckpt_type"], "checkpoint.sha256 must be str"),
    ("verify-gone-ckpt", ["verify", "art_gone"], "no longer exists"),
    ("verify-corrupt-onnx", ["verify", "art_corrupt_onnx"], "not a readable ONNX model"),
    ("verify-runtime", ["verify", "art_gone", "--runtimes", "nosuch"], "unknown runtime"),
    # collect / predictor fit
    ("collect-samples-0", [*COLLECT[:2], "0", *COLLECT[3:]], "--samples"),
    ("collect-calib-0", [*COLLECT, "--calib-batches", "0"], "--calib-batches"),
    ("collect-val-0", [*COLLECT, "--val-images", "0"], "--val-images"),
    ("collect-threads-0", [*COLLECT, "--threads", "0"], "--threads"),
    ("collect-foreign", ["collect", "--samples", "2", "-o", "foreign.txt"], "not a collect journal"),
    ("collect-foreign-npz", [*COLLECT, "--data", "foreign_data"], "not a CIFAR-10 .npz"),
    ("collect-dir", ["collect", "--samples", "2", "-o", "taken_dir"], "is a directory"),
    ("collect-no-parent", ["collect", "--samples", "2", "-o", "nodir/acc.jsonl"], "no such folder"),
    ("fit-exists", [*FIT, "-o", "taken.json"], "--force"),
    ("fit-no-parent", [*FIT, "-o", "nodir/p.pt"], "no such folder"),
    ("fit-nan-top1", ["predictor", "fit", "acc_nan.jsonl", "-o", "p.pt"], "top1"),
    ("fit-inf-top1", ["predictor", "fit", "acc_inf.jsonl", "-o", "p.pt"], "top1"),
    ("fit-top1-range", ["predictor", "fit", "acc_range.jsonl", "-o", "p.pt"], "top1 = 42"),
    ("fit-holdout-nan", [*FIT, "-o", "p.pt", "--holdout", "nan"], "--holdout"),
    ("fit-ensemble-0", [*FIT, "-o", "p.pt", "--ensemble", "0"], "--ensemble"),
    ("fit-threads-0", [*FIT, "-o", "p.pt", "--threads", "0"], "--threads"),
    # search
    ("search-flops-nan", [*S, "-o", "p.json", "--max-flops", "nan"], "--max-flops"),
    ("search-latency-inf", [*S, "-o", "p.json", "--max-latency-ms", "inf"], "--max-latency-ms"),
    ("search-bitops-neg", [*S, "-o", "p.json", "--max-bitops", "-1"], "--max-bitops"),
    ("search-pop-1", [*S, "-o", "p.json", "--pop", "1"], "--pop"),
    ("search-gen-0", [*S, "-o", "p.json", "--gen", "0"], "--gen"),
    ("search-threads-0", [*S, "-o", "p.json", "--threads", "0"], "--threads"),
    ("search-calib-0", [*S, "-o", "p.json", "--evaluate", "--calib-batches", "0"], "--calib-batches"),
    ("search-test-limit-0", [*S, "-o", "p.json", "--evaluate", "--test-limit", "0"], "--test-limit"),
    ("search-exists", [*S, "-o", "taken.json"], "--force"),
    ("search-best-exists", [*S, "-o", "p.json", "--best-out", "taken.json"], "--force"),
    ("search-plot-no-parent", [*S, "-o", "p.json", "--plot", "nodir/f.png"], "no such folder"),
    ("search-same-file", [*S, "-o", "p.json", "--best-out", "p.json"], "same file"),
    ("search-table-nan", [*S, "-o", "p.json", "--table", "table_nan.json"], "NaN"),
    ("search-table-negative", [*S, "-o", "p.json", "--table", "table_neg.json"], "outside [0, 100000]"),
    ("search-table-bigint", [*S, "-o", "p.json", "--table", "table_bigint.json"], "40 digits"),
    ("search-table-inf", [*S, "-o", "p.json", "--table", "table_inf.json"], "out of range"),
    ("search-table-types", [*S, "-o", "p.json", "--table", "table_types.json"], "entries must be dict"),
    ("search-predictor-nan", ["search", "--predictor", "pred_nan.pt", "-o", "p.json"], "non-finite"),
    ("search-device-unknown", [*S, "-o", "p.json", "--evaluate", "--device", "nosuch"], "unknown device"),
    ("search-device-statistic", [*S, "-o", "p.json", "--table", str(SHIPPED_TABLE), "--evaluate", "--device", "x86"],
     "holds min latencies"),
    ("search-evaluate-data", [*S, "-o", "p.json", "--evaluate", "--data", "foreign_data"], "not a CIFAR-10 .npz"),
    ("search-device-alone", [*S, "-o", "p.json", "--device", "x86"], "--device goes with --evaluate"),
    # seeds: numpy refuses negative ones, torch overflows past int64
    ("seed-sample-neg", ["sample", "--space", CIFAR, "--seed", "-1"], "--seed"),
    ("seed-train-huge", [*TRAIN, "--seed", "9" * 30], "--seed"),
    ("seed-search-neg", [*S, "-o", "p.json", "--seed", "-1"], "--seed"),
    ("seed-fit-huge", [*FIT, "-o", "p.pt", "--seed", str(2**64)], "--seed"),
    ("seed-collect-neg", [*COLLECT, "--seed", "-7"], "--seed"),
    ("seed-profile-neg", ["profile", "art_gone", "--device", "x86", "--seed", "-1"], "--seed"),
    # lut
    ("build-exists", [*BUILD, "-o", "taken.json"], "--force"),
    ("build-no-parent", [*BUILD, "-o", "nodir/t.json"], "no such folder"),
    ("build-threads-0", [*BUILD, "-o", "t.json", "--threads", "0"], "--threads"),
    ("build-workers-0", [*BUILD, "-o", "t.json", "--workers", "0"], "--workers"),
    ("build-fit-neg", [*BUILD, "-o", "t.json", "--fit-samples", "-1"], "--fit-samples"),
    ("build-resolution-0", [*BUILD[:-1], "0", "-o", "t.json"], "--resolution"),
    ("predict-nan", ["lut", "predict", "--table", "table_nan.json", "--arch", "good.json"], "NaN"),
    ("predict-negative", ["lut", "predict", "--table", "table_neg.json", "--arch", "good.json"], "outside"),
    ("predict-bigint", ["lut", "predict", "--table", "table_bigint.json", "--arch", "good.json"], "digits"),
    ("predict-nan-arch", ["lut", "predict", "--table", str(SHIPPED_TABLE), "--arch", "nan.json"], "NaN"),
    ("validate-samples-1", [*LV, "--samples", "1"], "--samples"),
    ("validate-tolerance-nan", [*LV, "--tolerance", "nan"], "--tolerance"),
    ("validate-tolerance-0", [*LV, "--tolerance", "0"], "--tolerance"),
    ("validate-min-within-2", [*LV, "--min-within", "2"], "--min-within"),
    ("validate-report-exists", [*LV, "--report", "taken.json"], "--force"),
    ("validate-plot-no-parent", [*LV, "--plot", "nodir/v.png"], "no such folder"),
    ("validate-statistic", ["lut", "validate", "--table", str(SHIPPED_TABLE), "--device", "x86"],
     "holds min latencies"),
    ("validate-table-negative", ["lut", "validate", "--table", "table_neg.json", "--device", "x86-1t"], "outside"),
    # deploy
    ("compile-exists", ["compile", "model.onnx", "--device", "x86", "-o", "taken_dir"], "--force"),
    ("compile-into-file", ["compile", "model.onnx", "--device", "x86", "-o", "taken.json"], "is a file"),
    ("compile-device", ["compile", "model.onnx", "--device", "nosuch", "-o", "c"], "unknown device"),
    ("device-file-nan", ["compile", "model.onnx", "--device", "dev_nan.json", "-o", "c"], "non-finite"),
    ("device-file-huge-int", ["compile", "model.onnx", "--device", "dev_huge.json", "-o", "c"], "digits"),
    ("device-file-type", ["compile", "model.onnx", "--device", "dev_type.json", "-o", "c"], "threads"),
    ("device-file-list", ["profile", "art_gone", "--device", "dev_list.json"], "JSON object"),
    ("compile-missing", ["compile", "none.onnx", "--device", "x86", "-o", "c"], "no such ONNX file"),
    ("compile-no-parent", ["compile", "model.onnx", "--device", "x86", "-o", "nodir/c"], "no such folder"),
    ("profile-timeout-nan", ["profile", "art_gone", "--device", "x86", "--timeout", "nan"], "--timeout"),
    ("profile-timeout-inf", ["profile", "art_gone", "--device", "x86", "--timeout", "inf"], "--timeout"),
    ("profile-timeout-0", ["profile", "art_gone", "--device", "x86", "--timeout", "0"], "--timeout"),
    ("tune-trials-0", ["tune", "model.onnx", "--trials", "0"], "--trials"),
    ("tune-subnets-0", ["tune", "--space", CIFAR, "--subnets", "0"], "--subnets"),
    ("tune-resolution-0", ["tune", "--space", CIFAR, "--resolution", "0"], "--resolution"),
    ("tune-missing", ["tune", "none.onnx"], "no such ONNX file"),
    ("pi-port-0", ["emulated-pi", "serve", "--port", "0"], "--port"),
    ("pi-port-big", ["emulated-pi", "serve", "--port", "70000"], "--port"),
    # outputs that cannot be written: refused before the work, nothing else written (search's front neither)
    ("unwritable-sample", [*SAMPLE, "-o", f"{UNWRITABLE}/x.json"], "cannot write into"),
    ("unwritable-build", [*BUILD, "-o", f"{UNWRITABLE}/t.json"], "cannot write into"),
    ("unwritable-compile", ["compile", "tiny.onnx", "--device", "x86", "-o", f"{UNWRITABLE}/c"], "cannot write into"),
    ("unwritable-train", [*TRAIN[:-1], f"{UNWRITABLE}/run"], "cannot write into"),
    ("unwritable-export", [*EXPORT[:-1], f"{UNWRITABLE}/e"], "cannot write into"),
    ("unwritable-collect", [*COLLECT[:-1], f"{UNWRITABLE}/a.jsonl"], "cannot write into"),
    ("unwritable-fit", [*FIT, "-o", f"{UNWRITABLE}/p.pt"], "cannot write into"),
    ("unwritable-tune-db", ["tune", "tiny.onnx", "--database", f"{UNWRITABLE}/db"], "cannot write into"),
    ("unwritable-search-best", [*S, "-o", "p.json", "--best-out", f"{UNWRITABLE}/b.json"], "cannot write into"),
    ("unwritable-validate-report", [*LV, "--report", f"{UNWRITABLE}/r.json"], "cannot write into"),
    # missing parent folders are never created
    ("export-no-parent", [*EXPORT[:-1], "nodir/e"], "no such folder"),
    ("train-no-parent", [*TRAIN[:-1], "nodir/run"], "no such folder"),
    ("tune-db-no-parent", ["tune", "tiny.onnx", "--database", "nodir/db"], "no such folder"),
    ("sample-parent-is-file", [*SAMPLE, "-o", "taken.json/x.json"], "a file, not a folder"),
    ("tune-db-parent-is-file", ["tune", "tiny.onnx", "--database", "taken.json/db"], "a file, not a folder"),
    ("sample-unicode-no-parent", [*SAMPLE, "-o", "ünï/☃.json"], "no such folder"),
    # empty strings: never stdout, the current folder or "no table"
    ("sample-o-empty", [*SAMPLE, "-o", ""], "an empty path"),
    ("train-out-empty", [*TRAIN[:-1], ""], "an empty path"),
    ("search-table-empty", [*S, "-o", "p.json", "--table", ""], "an empty path"),
    ("search-o-empty", [*S, "-o", ""], "an empty path"),
    ("export-out-empty", [*EXPORT[:-1], ""], "an empty path"),
    ("compile-out-empty", ["compile", "tiny.onnx", "--device", "x86", "-o", ""], "an empty path"),
    ("build-o-empty", [*BUILD, "-o", ""], "an empty path"),
    ("collect-o-empty", [*COLLECT[:-1], ""], "an empty path"),
    ("info-empty", ["info", ""], "an empty path"),
    ("verify-empty", ["verify", ""], "an empty path"),
    ("compile-onnx-empty", ["compile", "", "--device", "x86", "-o", "c"], "an empty path"),
    ("sample-space-empty", ["sample", "--space", ""], "unknown space"),
    ("export-target-empty", [*EXPORT, "--target", ""], "unknown device"),
    ("build-device-empty", ["lut", "build", "--device", "", "--space", CIFAR, "--resolution", "32", "-o", "t.json"],
     "unknown device"),
    # devices, FIFOs and symlink loops: never replaced, never a traceback
    ("sample-devnull", [*SAMPLE, "-o", "/dev/null"], "not a regular file"),
    ("sample-fifo-force", [*SAMPLE, "-o", "fifo", "--force"], "not a regular file"),
    ("fit-fifo-force", [*FIT, "-o", "fifo", "--force"], "not a regular file"),
    ("collect-devnull", [*COLLECT[:-1], "/dev/null"], "not a regular file"),
    ("compile-out-fifo", ["compile", "tiny.onnx", "--device", "x86", "-o", "fifo", "--force"], "not a regular file"),
    ("sample-o-loop", [*SAMPLE, "-o", "loop_a"], "--force"),
    ("info-loop", ["info", "loop_a"], "symbolic links"),
    ("predict-arch-loop", ["lut", "predict", "--table", str(SHIPPED_TABLE), "--arch", "loop_a"], "symbolic links"),
    ("info-name-too-long", ["info", "a" * 5000], "name too long"),
    ("sample-name-too-long", [*SAMPLE, "-o", "b" * 300], "name too long"),
    ("info-devnull", ["info", "/dev/null"], "not valid JSON"),
    ("eval-ckpt-devnull", ["eval", "--arch", "good.json", "--checkpoint", "/dev/null"], "checkpoint"),
    # folders where files are expected and the reverse
    ("info-dir", ["info", "taken_dir"], "is a directory"),
    ("eval-arch-dir", ["eval", "--arch", "taken_dir"], "cannot read arch config"),
    ("eval-ckpt-dir", ["eval", "--arch", "good.json", "--checkpoint", "taken_dir"], "checkpoint"),
    ("export-out-file", [*EXPORT[:-1], "taken.json"], "not a directory"),
    ("verify-file", ["verify", "taken.json"], "no such artifact folder"),
    ("verify-missing", ["verify", "nowhere"], "no such artifact folder"),
    ("fit-data-dir", ["predictor", "fit", "taken_dir", "-o", "p.pt"], "is a directory"),
    ("fit-o-dir", [*FIT, "-o", "taken_dir"], "is a directory"),
    ("search-predictor-dir", [*S[:1], "--predictor", "taken_dir", "-o", "p.json"], "is a directory"),
    ("search-table-dir", [*S, "-o", "p.json", "--table", "taken_dir"], "is a directory"),
    ("search-artifacts-file", [*S, "-o", "p.json", "--evaluate", "--device", "x86", "--artifacts", "taken.json"],
     "is a file"),
    ("predict-table-dir", ["lut", "predict", "--table", "taken_dir", "--arch", "good.json"], "is a directory"),
    ("validate-plot-dir", [*LV, "--plot", "taken_dir"], "is a directory"),
    ("compile-onnx-dir", ["compile", "taken_dir", "--device", "x86", "-o", "c"], "is a directory"),
    ("compile-db-file", ["compile", "tiny.onnx", "--device", "x86", "-o", "c", "--database", "taken.json"],
     "is a file"),
    ("compile-db-missing", ["compile", "tiny.onnx", "--device", "x86", "-o", "c", "--database", "nodb"],
     "not a MetaSchedule database"),
    ("profile-file", ["profile", "taken.json", "--device", "x86"], "is a file"),
    ("profile-missing", ["profile", "nowhere", "--device", "x86"], "does not exist"),
    ("tune-db-file", ["tune", "tiny.onnx", "--database", "taken.json"], "is a file"),
    ("tune-onnx-dir", ["tune", "taken_dir"], "is a directory"),
    ("pi-cache-file", ["emulated-pi", "serve", "--cache", "taken.json"], "is a file"),
    ("pi-build-cache-file", ["emulated-pi", "build", "--cache", "taken.json"], "is a file"),
    ("train-out-file", [*TRAIN[:-1], "taken.json"], "is a file"),
    ("train-init-dir", [*TRAIN, "--init-from", "taken_dir"], "is a directory"),
    ("train-data-file", [*TRAIN, "--data", "taken.json"], "data directory not found"),
    ("export-data-file", [*EXPORT, "--data", "taken.json"], "data directory not found"),
    ("collect-data-missing", [*COLLECT, "--data", "nowhere"], "data directory not found"),
    # truncated files and wrong JSON types
    ("info-trunc", ["info", "trunc.json"], "not valid JSON"),
    ("info-list", ["info", "list.json"], "must be a JSON object"),
    ("info-wrong-type", ["info", "wrongtype.json"], "resolution = '32'"),
    ("export-arch-trunc", ["export", "--arch", "trunc.json", "--out", "exp"], "not valid JSON"),
    ("verify-meta-trunc", ["verify", "art_trunc"], "not valid JSON"),
    ("verify-meta-list", ["verify", "art_list"], "not a qfa-deploy export artifact"),
    ("fit-empty-file", ["predictor", "fit", "empty.json", "-o", "p.pt"], "no measured subnets"),
    ("fit-truncated", ["predictor", "fit", "acc_trunc.jsonl", "-o", "p.pt"], "no measured subnets"),
    ("fit-missing", ["predictor", "fit", "none.jsonl", "-o", "p.pt"], "no such accuracy file"),
    ("search-table-cfg", [*S, "-o", "p.json", "--table", "good.json"], "not a qfa-deploy latency table"),
    ("predict-table-cfg", ["lut", "predict", "--table", "good.json", "--arch", "good.json"], "latency table"),
    ("search-predictor-json", [*S[:1], "--predictor", "good.json", "-o", "p.json"], "not a readable predictor"),
    ("eval-ckpt-json", ["eval", "--arch", "good.json", "--checkpoint", "good.json"], "not a readable checkpoint"),
    ("collect-ckpt-json", [*COLLECT, "--checkpoint", "good.json"], "not a readable checkpoint"),
    ("train-init-json", [*TRAIN, "--init-from", "good.json"], "not a readable checkpoint"),
    ("search-ckpt-json", [*S, "-o", "p.json", "--evaluate", "--checkpoint", "good.json"], "not a readable checkpoint"),
    ("export-ckpt-missing", [*EXPORT, "--checkpoint", "none.pt"], "no such checkpoint"),
    # another space than the model's or the table's
    ("eval-arch-other-space", ["eval", "--arch", "w12.json"], "space 'qfa-mbv3-w1.2'"),
    ("export-arch-other-space", ["export", "--arch", "w12.json", "--out", "exp"], "space 'qfa-mbv3-w1.2'"),
    ("predict-arch-other-space", ["lut", "predict", "--table", str(SHIPPED_TABLE), "--arch", "w12.json"],
     "space 'qfa-mbv3-w1.2'"),
    ("collect-journal-other-space", ["collect", "--samples", "1", "-o", "acc_w12.jsonl"], "use another output file"),
    ("eval-ckpt-other-space", ["eval", "--arch", "good.json", "--checkpoint", "w12.pt"], "weights do not match"),
    ("export-ckpt-other-space", [*EXPORT, "--checkpoint", "w12.pt"], "weights do not match"),
    ("collect-ckpt-other-space", [*COLLECT, "--checkpoint", "w12.pt"], "weights do not match"),
    ("search-ckpt-other-space", [*S, "-o", "p.json", "--evaluate", "--checkpoint", "w12.pt"], "is of space"),
    ("train-init-other-space", [*TRAIN, "--init-from", "w12.pt"], "is of space"),
    ("eval-ckpt-not-ours", ["eval", "--arch", "good.json", "--checkpoint", "plain.pt"],
     "not a qfa-deploy supernet checkpoint"),
    ("fit-too-few", ["predictor", "fit", "acc_w12.jsonl", "-o", "p.pt"], "at least 4 measured subnets"),
    # devices and trackers
    ("build-device-unknown", [*BUILD[:2], "--device", "nosuch", *BUILD[4:], "-o", "t.json"], "unknown device"),
    ("build-space-unknown", [*BUILD[:4], "--space", "nosuch", *BUILD[6:], "-o", "t.json"], "unknown space"),
    ("search-dead-tracker", [*S, "-o", "p.json", "--evaluate", "--device", "dev_dead.json"],
     "cannot reach the RPC tracker"),  # before the search: no front written
    ("build-dead-tracker", ["lut", "build", "--device", "dev_dead.json", "--space", CIFAR, "--resolution", "32",
                            "-o", "t.json"], "cannot reach the RPC tracker"),
    ("validate-device-unknown", ["lut", "validate", "--table", str(SHIPPED_TABLE), "--device", "nosuch"],
     "unknown device"),
    ("validate-device-other", ["lut", "validate", "--table", str(SHIPPED_TABLE), "--device", "rasp4b"],
     "holds min latencies"),
    ("profile-tracker-malformed", ["profile", "art_gone", "--device", "rasp4b", "--tracker", "nohost"], "HOST:PORT"),
    ("profile-tracker-port", ["profile", "art_gone", "--device", "rasp4b", "--tracker", "127.0.0.1:99999"],
     "TCP port"),
    ("profile-device-unknown", ["profile", "art_gone", "--device", "nosuch"], "unknown device"),
    ("compile-device-empty", ["compile", "tiny.onnx", "--device", "", "-o", "c"], "unknown device"),
    ("tune-device-unknown", ["tune", "tiny.onnx", "--device", "nosuch"], "unknown device"),
    ("tune-device-arm", ["tune", "tiny.onnx", "--device", "rasp4b", "--database", "db"], "not a local llvm device"),
    ("tune-space-unknown", ["tune", "--space", "nosuch", "--database", "db"], "unknown space"),
    ("tune-both", ["tune", "tiny.onnx", "--space", CIFAR], "one of them"),
    ("tune-neither", ["tune"], "one of them"),
    # numbers, choices and duplicated options (click keeps the last one)
    ("sample-seed-twice", [*SAMPLE, "--seed", "-1"], "--seed"),
    ("train-threads-twice", [*TRAIN, "--threads", "2", "--threads", "0"], "--threads"),
    ("train-q-epochs-1e999", [*TRAIN, "--q-epochs", "1e999"], "--q-epochs"),
    ("train-quantizer", [*TRAIN, "--act-quantizer", "nosuch"], "--act-quantizer"),
    ("sample-min-max", ["sample", "--space", CIFAR, "--min", "--max"], "at most one"),
    ("sample-bits-0", ["sample", "--space", CIFAR, "--max", "--bits", "0"], "--bits = 0"),
    ("sample-bits-alone", ["sample", "--space", CIFAR, "--bits", "4"], "--bits goes with"),
    ("info-both", ["info", "good.json", "--space", CIFAR], "one of them"),
    ("eval-limit-0", ["eval", "--arch", "good.json", "--limit", "0"], "--limit"),
    ("verify-limit-neg", ["verify", "art_gone", "--limit", "-1"], "--limit"),
    ("verify-agreement-neg", ["verify", "art_gone", "--min-agreement", "-1"], "--min-agreement"),
    ("collect-samples-huge", [*COLLECT[:2], "9" * 40, *COLLECT[3:]], "--samples"),
    ("fit-holdout-1", [*FIT, "-o", "p.pt", "--holdout", "1"], "--holdout"),
    ("fit-hidden-0", [*FIT, "-o", "p.pt", "--hidden", "0"], "--hidden"),
    ("search-flops-0", [*S, "-o", "p.json", "--max-flops", "0"], "--max-flops"),
    ("search-flops-infeasible", [*S, "-o", "p.json", "--max-flops", "0.0001"], "infeasible"),
    ("search-latency-no-table", [*S, "-o", "p.json", "--objective", "latency"], "needs a latency table"),
    ("search-pop-huge", [*S, "-o", "p.json", "--pop", "9" * 30], "--pop"),
    ("search-test-limit-neg", [*S, "-o", "p.json", "--evaluate", "--test-limit", "-1"], "--test-limit"),
    ("search-plot-same", [*S, "-o", "p.json", "--plot", "p.json"], "same file"),
    ("build-resolution-huge", [*BUILD[:-1], "5000", "-o", "t.json"], "--resolution"),
    ("validate-tolerance-neg", [*LV, "--tolerance", "-1"], "--tolerance"),
    ("validate-samples-0", [*LV, "--samples", "0"], "--samples"),
    ("validate-same-file", [*LV, "--report", "r.json", "--plot", "r.json"], "same file"),
    ("compile-onnx-is-json", ["compile", "good.json", "--device", "x86", "-o", "c"], "not a readable ONNX model"),
    ("devices-extra", ["devices", "extra"], "unexpected extra argument"),
    ("tune-bad-onnx-new-db", ["tune", "model.onnx", "--database", "db"], "not a readable ONNX model"),  # no empty db
]


def run_in(folder: Path, argv: list[str], monkeypatch):
    from qfa_deploy.cli import cli

    monkeypatch.chdir(folder)
    monkeypatch.delenv("QFA_DATA_DIR", raising=False)
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, argv)
    finally:
        torch.set_num_threads(threads)


def check_refused(result, fragment: str) -> None:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_and_nothing_is_written(layout, monkeypatch, argv, fragment):
    before = snapshot(layout)
    result = run_in(layout, argv, monkeypatch)
    check_refused(result, fragment)
    assert snapshot(layout) == before


def test_the_table_is_large_and_covers_every_command():
    from qfa_deploy.cli import cli

    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    covered = {c[1][0] for c in CASES}
    wanted = set(cli.commands) - {"convert"}  # convert's inputs are tested with it; its outputs in WRITERS
    assert wanted <= covered, wanted - covered


# Every command that writes: an existing output stays as it was without --force (with --force it
# is replaced, shown where that is cheap).
WRITERS = [
    ("sample", ["sample", "--space", CIFAR, "--seed", "1", "-o", "{out}"], "file"),
    ("predictor-fit", ["predictor", "fit", "acc.jsonl", "-o", "{out}"], "file"),
    ("search-o", [*S, "-o", "{out}"], "file"),
    ("search-best-out", [*S, "-o", "p.json", "--best-out", "{out}"], "file"),
    ("search-plot", [*S, "-o", "p.json", "--plot", "{out}"], "file"),
    ("search-artifacts", [*S, "-o", "p.json", "--evaluate", "--device", "x86", "--artifacts", "{out}"], "dir"),
    ("lut-build", [*BUILD, "-o", "{out}"], "file"),
    ("lut-validate-report", [*LV, "--report", "{out}"], "file"),
    ("lut-validate-plot", [*LV, "--plot", "{out}"], "file"),
    ("compile", ["compile", "model.onnx", "--device", "x86", "-o", "{out}"], "dir"),
    ("export", ["export", "--arch", "good.json", "--out", "{out}"], "dir"),
    # convert checks -o before reading SOURCE: a source that does not exist is never reached
    ("convert-qfa-gene", ["convert", "qfa-gene", "none.npy", "--index", "0", "-o", "{out}"], "file"),
    ("convert-qfa-checkpoint", ["convert", "qfa-checkpoint", "none.pth", "-o", "{out}"], "file"),
    ("convert-ofa-checkpoint", ["convert", "ofa-checkpoint", "none.pth", "-o", "{out}"], "file"),
    ("convert-qfa-samples", ["convert", "qfa-samples", "none", "-o", "{out}"], "file"),
]


@pytest.mark.parametrize(("argv", "kind"), [w[1:] for w in WRITERS], ids=[w[0] for w in WRITERS])
def test_existing_output_is_untouched_without_force(layout, tmp_path, monkeypatch, argv, kind):
    for name in ("good.json", "acc.jsonl", "pred.pt", "model.onnx"):
        shutil.copy(layout / name, tmp_path / name)
    out = tmp_path / "existing"
    if kind == "dir":
        out.mkdir()
        (out / "meta.json").write_text('{"not": "replaced"}\n')
    else:
        out.write_text("precious\n")
    before = snapshot(tmp_path)
    result = run_in(tmp_path, [a.replace("{out}", str(out)) for a in argv], monkeypatch)
    check_refused(result, "already exists (use --force to replace it)")
    assert snapshot(tmp_path) == before


def test_force_replaces_the_output(layout, tmp_path, monkeypatch):
    out = tmp_path / "cfg.json"
    out.write_text("old\n")
    result = run_in(tmp_path, ["sample", "--space", CIFAR, "--seed", "1", "-o", str(out), "--force"], monkeypatch)
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text()) == sample_arch(CIFAR, random.Random(1)).to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]  # no staging left


def test_train_keeps_an_existing_run_without_resume(tmp_path, monkeypatch):
    """train's existing output is a run folder: it continues with --resume, else it is left alone."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(tmp_path)
    result = run_in(tmp_path, ["train", "--space", CIFAR, "--out", str(run), "--data", str(data)], monkeypatch)
    check_refused(result, "--resume")
    assert snapshot(tmp_path) == before
