"""ARM64 (Raspberry Pi 4): cross-compile here (fast), and run on an emulated Pi over RPC (slow).

Slow tests and CI: ``.ci/run`` runs ``python3 -m pytest -q -m slow tests/test_arm64.py
tests/test_lut_rpc.py tests/test_cuda.py`` after the default run. Measured on this 2-core machine:
building the emulated Pi once ~2.5 min (debootstrap ~40 s, 110 MB of aarch64 wheels, TVM imported
under qemu to verify), then ~30 s for the qemu RPC server to register and a few seconds per model:
about 4 min on a fresh machine, well inside CI's 90 minutes (5.3 min with the image cached when
this test got ~10% of a shared core). The image is cached under ~/.cache/qfa-deploy/emulated-pi (or $QFA_CACHE).
The default run (``pytest -q``) skips them.
"""

from __future__ import annotations

import json
import shutil

import psutil
import pytest
from deploy_helpers import artifact_dir, device_file, exported_subnet_model, ort_qdq_model, write_meta

from qfa_deploy.deploy import compile_artifact, profile_artifact
from qfa_deploy.deploy.runner import elf_machine
from qfa_deploy.errors import QfaError

needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                 reason="aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)")


@needs_cross
def test_cross_compile_is_an_aarch64_elf(tmp_path):
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    meta = compile_artifact(onnx_path, "arm64", tmp_path)
    lib = tmp_path / "model.so"
    assert elf_machine(lib) == "aarch64"
    assert meta["device"] == "rasp4b"
    target = meta["target"]
    assert target["mtriple"] == "aarch64-linux-gnu" and target["mcpu"] == "cortex-a72"
    assert "+neon" in target["mattr"]


def test_missing_cross_compiler_is_a_clear_error(tmp_path):
    device = device_file(tmp_path, "rasp4b", name="pi-no-cc", cc="no-such-aarch64-gcc")
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    with pytest.raises(QfaError, match="cross compiler no-such-aarch64-gcc .* is not installed"):
        compile_artifact(onnx_path, str(device), tmp_path / "out")
    assert not (tmp_path / "out" / "model.so").exists()


@pytest.mark.slow
@needs_cross
def test_emulated_pi_runs_arm64_artifact_bit_exact(tmp_path, cifar_supernet, emulated_pi_image):
    from qfa_deploy.deploy.emulated_pi import EmulatedPi

    image = emulated_pi_image
    models = {"ort": ort_qdq_model(tmp_path / "ort.onnx")}
    try:
        models["exported"] = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet)
    except pytest.skip.Exception:
        pass
    artifacts = {}
    for name, onnx_path in models.items():
        folder = artifact_dir(tmp_path / name, onnx_path)
        write_meta(folder, compile_artifact(folder / "model.onnx", "rasp4b-emulated", folder))
        assert elf_machine(folder / "model.so") == "aarch64"
        artifacts[name] = folder
    with EmulatedPi(image, key="rasp4b-emu-test") as pi:
        for name, folder in artifacts.items():
            result = profile_artifact(folder, "rasp4b-emulated", tracker=pi.tracker_address, key="rasp4b-emu-test",
                                      timeout=120)
            parity = result["parity"]
            # The same QDQ arithmetic as onnxruntime (no-opt) on x86, computed on emulated aarch64.
            assert parity["argmax_agree"], (name, parity)
            if name == "ort":
                assert parity["bit_exact"], parity
            else:
                assert parity["max_abs_diff"] <= 1e-5, (name, parity)
            assert result["timing"] == "emulated (not latency)" and result["emulated"] is True
            json.dumps(result)
        pids = pi.all_pids()
        assert len(pids) >= 3  # tracker, its popen_worker, qemu (+ forked session workers)
    assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
