"""Small scratch buffers of the CPU schedules (accumulator tiles, the dot intrinsic's code word) live
on the stack: TVM 0.27 serves any other CPU buffer from the runtime's workspace pool, an alloc/free
pair through the runtime per tile (``schedule.accumulator_tile``). The check reads the LLVM IR of each
CPU target's build of a small QDQ net for workspace requests under TVM's 1 KB stack limit."""

from __future__ import annotations

import re

import onnx
import pytest
from deploy_helpers import ort_qdq_model

# TVMBackendAllocWorkspace(device_type, device_id, nbytes, dtype_code_hint, dtype_bits_hint)
WORKSPACE_REQUEST = re.compile(r"call ptr %[\w.]+\(i32 \d+, i32 %[\w.]+, i64 (\d+), i32 \d+, i32 \d+\)")
STACK_LIMIT = 1024  # TVM's kMaxStackAlloca


def _llvm_ir(onnx_path, device: str) -> str:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from qfa_deploy.deploy.compile import _import_onnx, _schedule, onnx_input_specs
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.registry import resolve

    dev = load_device(device)
    model = onnx.load(str(onnx_path))
    mod = _import_onnx(from_onnx, model, onnx_input_specs(model), onnx_path)
    mod, _, _ = _schedule(mod, dev.tvm_target(), resolve("auto", dev), None)
    executable = tvm.compile(mod, target=dev.tvm_target())

    def sources(module):
        if module.kind == "llvm":
            yield module.inspect_source("ll")
        for child in module.imports:
            yield from sources(child)

    return "\n".join(sources(executable.mod))


@pytest.mark.parametrize("device", ["x86", "rasp4b", "rasp5"])  # tiled-vnni, tiled-neon, tiled-dotprod
def test_no_small_buffer_comes_from_the_workspace_pool(tmp_path, device):
    ir = _llvm_ir(ort_qdq_model(tmp_path / "net.onnx", resolution=16), device)
    assert "define" in ir and "TVMBackendAllocWorkspace" in ir  # the host code, with the pool's hook
    small = [int(n) for n in WORKSPACE_REQUEST.findall(ir) if int(n) < STACK_LIMIT]
    assert not small, f"{device}: {len(small)} workspace requests under {STACK_LIMIT} bytes: {sorted(set(small))}"
