"""Compile the CUDA kernels of a CUDA artifact ahead of time with nvcc (no GPU needed).

A CUDA ``model.so`` carries CUDA C source that the GPU machine compiles when it loads the library
(NVRTC, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc). ``compile_artifact`` also writes that source to
``model.cu``; ``compile_cuda_offline`` turns it into a fatbin here, which checks that the kernels
compile for the device's architecture before a GPU is ever involved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.compile import CUDA_SOURCE_NAME
from qfa_deploy.errors import QfaError

__all__ = ["compile_cuda_offline"]


def compile_cuda_offline(artifact_dir: Path, arch: str = "sm_80", target_format: str = "fatbin") -> Path:
    """nvcc ``artifact_dir/model.cu`` into ``artifact_dir/model.<target_format>``; returns its path."""
    import tvm
    from tvm.support import nvcc

    source = Path(artifact_dir) / CUDA_SOURCE_NAME
    if not source.is_file():
        raise QfaError(f"{artifact_dir} has no {CUDA_SOURCE_NAME} (compile it for a CUDA device first)")
    if shutil.which("nvcc") is None:
        raise QfaError("nvcc is not installed (the CUDA toolkit's compiler)")
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise QfaError(f"arch must look like sm_80, not {arch!r}")
    out = source.with_suffix(f".{target_format}")
    gencode = ["-gencode", f"arch=compute_{arch[3:]},code=sm_{arch[3:]}"]
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.compile_cuda reads the current target
            binary = nvcc.compile_cuda(source.read_text(), target_format=target_format, arch=gencode,
                                       compiler="nvcc")
    except Exception as exc:
        raise QfaError(f"nvcc cannot compile {source}: {one_line(exc)}") from None
    out.write_bytes(bytes(binary))
    return out
