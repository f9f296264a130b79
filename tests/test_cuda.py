"""CUDA (sm_80): compile for the GPU target without a GPU; the kernels compile offline with nvcc.

The CUDA build itself is fast; the nvcc step is marked slow (~1 min here) and is one of the slow
tests `.ci/run` runs (skipped there without nvcc). Running the library needs a GPU: not tested here.
"""

from __future__ import annotations

import shutil

import pytest
from deploy_helpers import ort_qdq_model

from qfa_deploy.deploy import compile_artifact


def test_cuda_compile_carries_kernel_source(tmp_path):
    meta = compile_artifact(ort_qdq_model(tmp_path / "model.onnx"), "cuda", tmp_path)
    assert meta["device"] == "cuda-sm80"
    assert meta["target"]["kind"] == "cuda" and meta["target"]["arch"] == "sm_80"
    assert (tmp_path / "model.so").is_file()
    source = (tmp_path / "model.cu").read_text()
    assert "__global__" in source and "extern \"C\"" in source


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    from qfa_deploy.deploy.cuda import compile_cuda_offline

    compile_artifact(ort_qdq_model(tmp_path / "model.onnx"), "cuda-sm80", tmp_path)
    fatbin = compile_cuda_offline(tmp_path, arch="sm_80")
    data = fatbin.read_bytes()
    assert fatbin.name == "model.fatbin" and len(data) > 1000
    assert data[:4] == bytes.fromhex("50ed55ba")  # the fatbin magic (0xBA55ED50, little-endian)
