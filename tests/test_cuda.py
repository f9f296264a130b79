"""CUDA (sm_80): compile for the GPU target without a GPU; with nvcc the kernels are compiled here and
embedded in the library as a fatbin, so it loads with TVM's runtime alone (no compile hook).

The CUDA build itself is fast; the nvcc tests are marked slow and are among the slow tests `.ci/run`
runs (skipped there without nvcc). Running the kernels needs a GPU: not tested here. What the
load test does and does not exercise is in its docstring.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from deploy_helpers import ort_qdq_model

from qfa_deploy.deploy import compile_artifact
from qfa_deploy.deploy.device import load_device
from qfa_deploy.deploy.targets.cuda.kernels import KERNELS_ENV, embedded_cuda_modules, fatbin_entries

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
KERNEL_NAME = re.compile(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(")


def _path_without_nvcc(monkeypatch) -> None:
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))
    assert shutil.which("nvcc") is None and shutil.which("gcc") is not None


def test_cuda_source_mode_carries_kernel_source(tmp_path):
    meta = compile_artifact(ort_qdq_model(tmp_path / "model.onnx"), "cuda", tmp_path, cuda_kernels="source")
    assert meta["device"] == "cuda-sm80"
    assert meta["schedule"] == "dlight-gpu"  # targets.cuda: what TVM's CUDA pipeline applies
    assert meta["target"]["kind"] == "cuda" and meta["target"]["arch"] == "sm_80"
    source = (tmp_path / "model.cu").read_text()
    assert meta["cuda_kernels"] == {"format": "cuda", "arch": "sm_80", "code_bytes": len(source.encode())}
    assert "__global__" in source and "extern \"C\"" in source
    modules = embedded_cuda_modules(tmp_path / "model.so")
    assert modules == [{"format": "cuda", "code_bytes": len(source.encode())}]


def test_without_nvcc_auto_says_so_in_one_line_and_ships_source(tmp_path, monkeypatch, caplog):
    _path_without_nvcc(monkeypatch)
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    with caplog.at_level("WARNING"):
        meta = compile_artifact(onnx_path, "cuda", tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("qfa_deploy")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "nvcc" in warnings[0] and f"{KERNELS_ENV}=source" in warnings[0]
    assert meta["cuda_kernels"]["format"] == "cuda"
    assert embedded_cuda_modules(tmp_path / "model.so")[0]["format"] == "cuda"


def test_fatbin_request_without_nvcc_is_one_line_exit_2(tmp_path, monkeypatch):
    from qfa_deploy.cli import cli

    _path_without_nvcc(monkeypatch)
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    for value, expect in (("fatbin", "needs nvcc"), ("ptx", "use one of auto, fatbin, source")):
        monkeypatch.setenv(KERNELS_ENV, value)
        out = tmp_path / f"out-{value}"
        result = CliRunner().invoke(cli, ["compile", str(onnx_path), "-d", "cuda", "-o", str(out)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr
        assert not out.exists()


@pytest.mark.slow
@needs_nvcc
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    from qfa_deploy.deploy.targets.cuda.kernels import compile_cuda_offline

    compile_artifact(ort_qdq_model(tmp_path / "model.onnx"), "cuda-sm80", tmp_path, cuda_kernels="source")
    fatbin = compile_cuda_offline(tmp_path, arch="sm_80")
    data = fatbin.read_bytes()
    assert fatbin.name == "model.fatbin" and len(data) > 1000
    assert data[:4] == bytes.fromhex("50ed55ba")  # the fatbin magic (0xBA55ED50, little-endian)
    assert fatbin_entries(data) == [{"kind": "sass", "arch": "sm_80"}]


# Every function the real driver library would provide to libtvm_runtime_cuda, as a function that
# aborts the process: the library can be dlopen'ed on this GPU-less machine, and any driver call
# during the load would kill the child process (and so fail the test).
_STANDIN_DRIVER = """#include <stdlib.h>
{functions}
"""

_LOAD_SCRIPT = r"""
import ctypes, json, os, re, sys
import tvm.runtime  # TVM_USE_RUNTIME_LIB=1: libtvm_runtime only, no compiler library
import tvm_ffi
from tvm.base import _LOADED_LIBS, _RUNTIME_ONLY

runtime_dir = os.path.dirname(_LOADED_LIBS["tvm_runtime"]._name)
ctypes.CDLL(os.path.join(runtime_dir, "libtvm_runtime_cuda.so"))  # the CUDA runtime plugin
# `import tvm` registers tvm.support.nvcc's compile hook: remove it, as a deployment without
# the compiler stack (or a C++ host) would not have it
tvm_ffi.registry.remove_global_func("tvm_callback_cuda_compile")
report = {"runtime_only": _RUNTIME_ONLY, "compiler_loaded": "tvm_compiler" in _LOADED_LIBS,
          "hook": tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True) is not None}
for lib_path, source_path in zip(sys.argv[1::2], sys.argv[2::2]):
    names = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", open(source_path).read())
    try:
        lib = tvm.runtime.load_module(lib_path)
    except Exception as exc:
        report[lib_path] = {"error": str(exc).strip().splitlines()[-1]}
        continue
    cuda = [m for m in lib.imports[0].imports if m.kind == "cuda"]
    report[lib_path] = {
        "root": lib.kind, "cuda_modules": len(cuda), "cuda_source": cuda[0].inspect_source("cuda"),
        "kernels": len(names), "kernels_found": sum(cuda[0].implements_function(n) for n in names),
        "unknown_found": cuda[0].implements_function("no_such_kernel"),
    }
print(json.dumps(report))
"""


def _standin_driver(folder: Path) -> Path:
    import tvm

    plugin = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).parent / "libtvm_runtime_cuda.so"
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(plugin)], capture_output=True, text=True,
                               check=True).stdout
    names = sorted(set(re.findall(r"\bU (cu[A-Z]\w*)", undefined)))
    assert "cuModuleLoadData" in names
    folder.mkdir(exist_ok=True)
    source = folder / "driver_standin.c"
    source.write_text(_STANDIN_DRIVER.format(functions="\n".join(f"int {n}(void) {{ abort(); }}" for n in names)))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(folder / "libcuda.so.1"),
                    str(source)], check=True)
    return folder


@pytest.mark.slow
@needs_nvcc
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("nm") is None, reason="needs gcc and nm")
def test_cuda_library_embeds_fatbin_and_loads_with_runtime_only(tmp_path, monkeypatch):
    """The library holds an nvcc fatbin (SASS + PTX for the device's sm_XX, no CUDA source), and a
    fresh process with only libtvm_runtime + TVM's CUDA runtime plugin and no compile hook loads it;
    the same model shipped as source fails there.

    Exercised: TVM's real loader (``ffi.Module.load_from_bytes.cuda`` in libtvm_runtime_cuda) reading
    the library's module blob, the CUDA module's format and function table (every kernel resolves).
    Not exercised (no GPU here): ``cuModuleLoadData`` of the fatbin and any kernel launch. The GPU
    driver library (libcuda.so.1) is absent, so the plugin is given a stand-in whose every function
    aborts: the load touches none of them.
    """
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    sm86 = replace(load_device("cuda"), name="cuda-sm86-test",
                   target={"kind": "cuda", "arch": "sm_86", "host": {"kind": "llvm"}})

    built = {}
    for name, device, mode in (("fat80", "cuda", None), ("fat86", sm86, None), ("src", "cuda", "source")):
        out = tmp_path / name
        built[name] = (out, compile_artifact(onnx_path, device, out, cuda_kernels=mode))
    for name, arch in (("fat80", "sm_80"), ("fat86", "sm_86")):
        out, meta = built[name]
        images = [{"kind": "ptx", "arch": arch}, {"kind": "sass", "arch": arch}]
        assert meta["cuda_kernels"]["format"] == "fatbin" and meta["cuda_kernels"]["arch"] == arch
        assert meta["cuda_kernels"]["nvcc_seconds"] > 0
        assert sorted(meta["cuda_kernels"]["images"]) == [f"ptx {arch}", f"sass {arch}"]
        modules = embedded_cuda_modules(out / "model.so")
        assert len(modules) == 1 and modules[0]["format"] == "fatbin", modules
        assert sorted(modules[0]["images"], key=lambda e: e["kind"]) == images
        library = (out / "model.so").read_bytes()
        assert b"__global__" not in library and b"extern \"C\"" not in library  # no CUDA source inside
        assert "__global__" in (out / "model.cu").read_text()  # kept beside it for inspection
    assert b"__global__" in (built["src"][0] / "model.so").read_bytes()

    driver = _standin_driver(tmp_path / "driver")
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1",
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(driver), os.environ.get("LD_LIBRARY_PATH")])))
    args = []
    for name in ("fat80", "fat86", "src"):
        args += [str(built[name][0] / "model.so"), str(built[name][0] / "model.cu")]
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["runtime_only"] and not report["compiler_loaded"] and not report["hook"]
    for name in ("fat80", "fat86"):
        loaded = report[args[args.index(str(built[name][0] / "model.so"))]]
        assert loaded["root"] == "relax.VMExecutable" and loaded["cuda_modules"] == 1, loaded
        assert loaded["cuda_source"] == ""  # nothing to compile at load
        assert loaded["kernels"] > 5 and loaded["kernels_found"] == loaded["kernels"]
        assert not loaded["unknown_found"]
    failed = report[str(built["src"][0] / "model.so")]
    assert "tvm_callback_cuda_compile" in failed.get("error", ""), failed


_GPU_HOST_SCRIPT = r"""
import json, sys
import tvm
from qfa_deploy.deploy.compile import compile_artifact
assert "tvm_runtime_cuda" in tvm.base._LOADED_LIBS  # the CUDA plugin loaded, as on a GPU machine
out = {}
# no GPU to detect: TVM's compile hook takes the arch from the current target scope
with tvm.target.Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}}):
    for mode in ("source", "auto"):
        out[mode] = compile_artifact(sys.argv[1], "cuda", sys.argv[2] + "/" + mode, cuda_kernels=mode)["cuda_kernels"]
print(json.dumps(out))
"""


@pytest.mark.slow
@needs_nvcc
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("nm") is None, reason="needs gcc and nm")
def test_fatbin_replaces_what_tvm_compiles_on_a_build_machine_with_a_driver(tmp_path, monkeypatch):
    """Where TVM's CUDA plugin loads at build time (a build machine with a GPU driver), ``tvm.compile``
    already compiles the kernels through its hook (nvcc here, TVM_CUDA_COMPILE_MODE=nvcc; NVRTC by
    default) and the module holds a binary, not source: the fatbin (SASS + PTX of the profile's arch)
    replaces it all the same. The driver is the aborting stand-in (nothing calls it while building)."""
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    onnx_path = ort_qdq_model(tmp_path / "model.onnx")
    driver = _standin_driver(tmp_path / "driver")
    env = dict(os.environ, TVM_CUDA_COMPILE_MODE="nvcc",
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(driver), os.environ.get("LD_LIBRARY_PATH")])))
    proc = subprocess.run([sys.executable, "-c", _GPU_HOST_SCRIPT, str(onnx_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kernels = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kernels["source"]["format"] == "cubin"  # TVM's own build of the kernels (its hook's output)
    assert kernels["auto"]["format"] == "fatbin" and sorted(kernels["auto"]["images"]) == ["ptx sm_80", "sass sm_80"]
    assert embedded_cuda_modules(tmp_path / "auto" / "model.so")[0]["format"] == "fatbin"
