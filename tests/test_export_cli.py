"""``qfa-deploy export`` / ``verify``: artifacts written whole, bad input refused.

Bad input exits with status 2 and one line on stderr, and leaves no artifact and no temporary
folder behind. Most cases run the CLI in-process (click's runner, same code path, no 3 s interpreter
start each); the round trip and one error case run the installed console script as a subprocess.
The checkpoint is a random supernet (the embedded reference may not exist yet); calibration reads
the shared CIFAR-10 validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from qfa_deploy.arch import ArchConfig, sample_arch

SPACE = "qfa-mbv3-cifar10"


def _script() -> str:
    found = shutil.which("qfa-deploy")
    if found is None:
        pytest.fail("the qfa-deploy console script is not installed (pip install -e .)")
    return found


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([_script(), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same command in this process (click's test runner), as a CompletedProcess."""
    from click.testing import CliRunner

    from qfa_deploy.cli import cli

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    import torch

    from qfa_deploy.checkpoint import save_checkpoint
    from qfa_deploy.nn.supernet import QFASupernet

    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    net = QFASupernet(SPACE)
    save_checkpoint(d / "ckpt.pt", SPACE, net.state_dict(), act_quantizer="batchquant")
    (d / "cfg.json").write_text(sample_arch(SPACE, random.Random(6)).to_json())
    (d / "corrupt.json").write_text('{"space": "qfa-mbv3-cifar10", "resolution": 32,,}')
    (d / "imagenet.json").write_text(ArchConfig.smallest("qfa-mbv3-w1.2").to_json())
    (d / "a_file").write_text("not a folder")
    return d


@pytest.fixture()
def work(tmp_path) -> Path:
    out = tmp_path / "work"
    out.mkdir()
    return out


def export_args(inputs: Path, out: Path, *extra: str, cfg: str = "cfg.json") -> list[str]:
    return [
        "export", "--arch", str(inputs / cfg), "--target", "onnx", "--checkpoint", str(inputs / "ckpt.pt"),
        "--calib-batches", "1", "--out", str(out), "--threads", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [("missing.json", "no such arch config"), ("corrupt.json", "not valid JSON"), ("imagenet.json", "space")],
)
def test_bad_arch_config(inputs, work, cfg, fragment):
    runner = run if cfg == "missing.json" else invoke  # one case through the real console script
    result = runner(*export_args(inputs, work / "art", cfg=cfg), cwd=work)
    assert_user_error(result, fragment)
    assert not (work / "art").exists() and leftovers(work) == []


def test_existing_folder_needs_force(inputs, work):
    (work / "art").mkdir()
    (work / "art" / "keep.txt").write_text("mine")
    result = invoke(*export_args(inputs, work / "art"), cwd=work)
    assert_user_error(result, "--force")
    assert (work / "art" / "keep.txt").read_text() == "mine" and leftovers(work) == []


def test_unwritable_folder(inputs, work):
    result = invoke(*export_args(inputs, inputs / "a_file" / "art"), cwd=work)
    assert_user_error(result, "cannot write")
    assert leftovers(inputs) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_parent(inputs, work):
    parent = work / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert_user_error(invoke(*export_args(inputs, parent / "art"), cwd=work), "cannot write")
    finally:
        parent.chmod(0o700)
    assert list(parent.iterdir()) == []


def test_bad_options(inputs, work):
    assert_user_error(invoke(*export_args(inputs, work / "art", "--calib-batches", "-1"), cwd=work), "--calib-batches")
    args = export_args(inputs, work / "art")
    args[args.index("onnx")] = "no-such-device"
    assert_user_error(invoke(*args, cwd=work), "no-such-device")
    assert_user_error(invoke("verify", str(work), cwd=work), "meta.json")
    assert not (work / "art").exists() and leftovers(work) == []


def test_export_then_verify(inputs, work):
    out = work / "art"
    result = run(*export_args(inputs, out), cwd=work)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.onnx"] and leftovers(work) == []
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "qfa-artifact" and meta["target"] == "onnx" and meta["space"] == SPACE
    cfg = ArchConfig.from_dict(meta["arch"])
    assert cfg == sample_arch(SPACE, random.Random(6))
    assert meta["checkpoint"]["sha256"] == hashlib.sha256((inputs / "ckpt.pt").read_bytes()).hexdigest()
    assert meta["files"] == {"model.onnx": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()}
    assert meta["calibration"]["batches"] == 1 and meta["calibration"]["split"] == "val"
    assert set(meta["versions"]) == {"qfa_deploy", "torch", "onnx"}

    import onnx

    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props}["qfa.arch"] == cfg.canonical_json()

    # the subnet is rebuilt from the recorded checkpoint with identical constants
    result = run(
        "verify", str(out), "--limit", "50", "--runtimes", "pytorch,folded,ort_noopt,ort_default",
        "--min-agreement", "0", "--json", "--threads", "1", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rebuild"]["identical"], report["rebuild"]
    quantizers = report["quantizers"]  # teacher-forced, every quantizer within one step
    assert quantizers["max_code_diff"] <= 1 and quantizers["differing_codes"] <= 1e-5 * quantizers["codes"]
    assert report["images"] == 50
    assert set(report["runtimes"]) == {"pytorch", "folded", "ort_noopt", "ort_default"}
    assert (
        report["runtimes"]["ort_default"]["max_abs_logit_diff"] == report["runtimes"]["ort_noopt"]["max_abs_logit_diff"]
    )

    # --force replaces the artifact whole
    first = (out / "model.onnx").read_bytes()
    result = invoke(*export_args(inputs, out, "--force"), cwd=work)
    assert result.returncode == 0, result.stderr
    assert (out / "model.onnx").read_bytes() == first and leftovers(work) == []

    # a tampered artifact is refused
    (out / "model.onnx").write_bytes(first[:-1])
    assert_user_error(invoke("verify", str(out), cwd=work), "sha256")


@pytest.mark.slow
def test_export_for_x86_then_verify_the_library(inputs, work):
    """``--target x86`` hands the ONNX model to ``qfa_deploy.deploy.compile`` (here with the opt-in
    ``--schedule tiled-cpu``) and records its meta; ``verify`` runs the compiled library itself."""
    out = work / "art"
    args = export_args(inputs, out)
    args[args.index("onnx")] = "x86"
    result = run(*args, "--schedule", "tiled-cpu", cwd=work)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["target"] == "x86" and meta["compile"]["target"]["kind"] == "llvm"
    assert meta["compile"]["schedule"] == "tiled-cpu"
    library = meta["compile"]["library"]
    assert set(meta["files"]) == {"model.onnx", library} and leftovers(work) == []
    assert meta["files"][library] == hashlib.sha256((out / library).read_bytes()).hexdigest()
    result = run(
        "verify", str(out), "--limit", "20", "--runtimes", "pytorch,ort_noopt,tvm_artifact",
        "--min-agreement", "0", "--json", "--threads", "1", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["runtimes"]) == {"pytorch", "ort_noopt", "tvm_artifact"}
    assert report["runtimes"]["tvm_artifact"]["agreement_vs_ort_noopt"] >= 0.9  # the same model
