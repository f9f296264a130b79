"""Small QDQ ONNX models and device files for the deploy tests (TVM compile, run, RPC).

Two kinds of QDQ model that need no trained supernet:
- ``ort_qdq_model``: a small conv net exported from torch and quantized by onnxruntime's
  ``quantize_static`` (uint8 activations, int8 per-channel weights);
- ``clip_qdq_model``: hand-built with onnx.helper the way the exporter writes b-bit layers: a Clip to
  the 2/3/4-bit range before each QuantizeLinear, int8 weights restricted to the b-bit grid.
And ``exported_subnet_model``: the project's own exporter on a CIFAR subnet, when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "export"  # the example arch configs the project ships
FAST_PROTOCOL = {"warmup": 1, "number": 2, "repeat": 5, "min_repeat_ms": 0}


def ort_qdq_model(path: Path, resolution: int = 16) -> Path:
    """A conv / depthwise / linear net, float ONNX from torch, then onnxruntime quantize_static (QDQ)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    fp = path.with_suffix(".fp32.onnx")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.randn(1, 3, resolution, resolution), str(fp), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    fp.unlink()
    return path


def clip_qdq_model(path: Path, bits: tuple[int, int, int] = (4, 3, 2), resolution: int = 12) -> Path:
    """Input -> [Clip -> Q -> DQ -> Conv(DQ int8 b-bit weights) -> Relu] per entry of ``bits`` -> pool."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    x, channels = "input", 3
    for i, b in enumerate(bits):
        out_ch = 8
        scale, zero = np.float32(0.05 * (i + 1)), np.uint8(2 ** (b - 1))
        lo, hi = (0 - int(zero)) * scale, (2**b - 1 - int(zero)) * scale  # the b-bit range in a uint8 container
        nodes.append(helper.make_node("Clip", [x, const(f"lo{i}", np.float32(lo)), const(f"hi{i}", np.float32(hi))],
                                      [f"clip{i}"]))
        nodes.append(helper.make_node("QuantizeLinear", [f"clip{i}", const(f"s{i}", scale), const(f"z{i}", zero)],
                                      [f"q{i}"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"dq{i}"]))
        w = rng.integers(-(2 ** (b - 1)), 2 ** (b - 1), size=(out_ch, channels, 3, 3)).astype(np.int8)
        w_scale = (0.02 + 0.01 * rng.random(out_ch)).astype(np.float32)
        nodes.append(helper.make_node("DequantizeLinear", [const(f"w{i}", w), const(f"ws{i}", w_scale),
                                                           const(f"wz{i}", np.zeros(out_ch, np.int8))],
                                      [f"wdq{i}"], axis=0))
        bias = const(f"b{i}", (0.1 * rng.standard_normal(out_ch)).astype(np.float32))
        nodes.append(helper.make_node("Conv", [f"dq{i}", f"wdq{i}", bias], [f"conv{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, channels = f"relu{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["logits"], axis=1))
    graph = helper.make_graph(
        nodes, "clip_qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def exported_subnet_model(path: Path, supernet, seed: int = 3) -> Path:
    """The project's QDQ exporter on a random CIFAR subnet of ``supernet`` (skips if not installed)."""
    import random

    export = pytest.importorskip("qfa_deploy.export.onnx_export", reason="the QDQ exporter is not installed")
    fold_mod = pytest.importorskip("qfa_deploy.fold", reason="fold is not installed")
    from qfa_deploy.arch import sample_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.extract import extract

    cfg = sample_arch(supernet.space.name, random.Random(seed))
    subnet = extract(supernet, cfg)
    g = torch.Generator().manual_seed(seed)
    calibrate(subnet, (torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)), cfg.resolution, 2)
    model = export.export_onnx(fold_mod.fold(subnet.eval()), batch=1)
    export.save_onnx(model, path)
    return path


def device_file(folder: Path, base: str, **changes) -> Path:
    """A copy of ``devices/BASE.json`` with ``changes`` (e.g. a short protocol) under ``folder``."""
    from qfa_deploy.deploy.device import load_device

    data = load_device(base).to_dict()
    data.update(changes)
    path = folder / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def alive_pids(pids) -> list[int]:
    """Those of ``pids`` still running (zombies count as ended)."""
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def artifact_dir(folder: Path, onnx_path: Path) -> Path:
    """``folder`` with ``model.onnx`` copied in (compile_artifact adds model.so)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    return folder


def write_meta(folder: Path, meta: dict) -> None:
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed ``qfa-deploy`` console script as a real subprocess."""
    script = Path(sysconfig.get_path("scripts")) / "qfa-deploy"
    exe = str(script) if script.is_file() else shutil.which("qfa-deploy")
    if exe is None:
        pytest.fail("the qfa-deploy console script is not installed (pip install -e .)")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def invoke_cli(folder: Path, argv: list[str], monkeypatch):
    """The CLI in this process (click's CliRunner) from ``folder``; torch's thread count is put back
    (commands set it)."""
    from click.testing import CliRunner

    from qfa_deploy.cli import cli

    monkeypatch.chdir(folder)
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, argv)
    finally:
        torch.set_num_threads(threads)


def compile_x86_beside_onnxruntime(folder: Path, onnx_path: Path, image: np.ndarray, caplog,
                                   log_marker: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(the x86 artifact's output, onnxruntime's (no graph optimisation), the one compile log line holding
    ``log_marker``) for a one-input model: compiled into ``folder`` with a short protocol."""
    import logging

    from qfa_deploy.deploy import compile_artifact, load_device
    from qfa_deploy.deploy.parity import onnxruntime_outputs
    from qfa_deploy.deploy.runner import open_session

    fast_x86 = device_file(folder, "x86", name="x86-fast", protocol=FAST_PROTOCOL)
    art = artifact_dir(folder / "art", onnx_path)
    with caplog.at_level(logging.INFO, logger="qfa_deploy"):
        compile_artifact(art / "model.onnx", str(fast_x86), art)
    (line,) = [r.getMessage() for r in caplog.records if log_marker in r.getMessage()]
    with open_session(load_device(str(fast_x86))) as session:
        got = session.run(session.load(art / "model.so"), [image])[0]
    want = onnxruntime_outputs(onnx_path, [{"name": "input"}], [image])[0]
    return got, want, line
