"""Scratch tiles of the CPU schedules (accumulator tiles, packed codes, the dot intrinsic's code word)
live on the stack, not in the runtime's workspace pool (an alloc/free pair through the runtime per
tile): ``schedule.accumulator_tile`` keeps them in the one scope TVM 0.27 puts on the stack, and
``targets.cpu.stack_scratch`` marks the larger ones for the stack within a budget. The checks read the
LLVM IR of each CPU target's build of a small QDQ net, and run a function past the budget."""

from __future__ import annotations

import re

import onnx
import pytest
from deploy_helpers import ort_qdq_model

from qfa_deploy.deploy.targets.cpu.stack_scratch import MAX_BUFFER_BYTES, STACK_BUDGET_BYTES, register_pipeline

# TVMBackendAllocWorkspace(device_type, device_id, nbytes, dtype_code_hint, dtype_bits_hint)
WORKSPACE_REQUEST = re.compile(r"call ptr %[\w.]+\(i32 \d+, i32 %[\w.]+, i64 (\d+), i32 \d+, i32 \d+\)")


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
    executable = tvm.compile(mod, target=dev.tvm_target(), tir_pipeline=register_pipeline())  # as compile's _build

    def sources(module):
        if module.kind == "llvm":
            yield module.inspect_source("ll")
        for child in module.imports:
            yield from sources(child)

    return "\n".join(sources(executable.mod))


def _requests(ir: str) -> list[int]:
    return [int(n) for n in WORKSPACE_REQUEST.findall(ir)]


@pytest.mark.parametrize("device", ["x86", "rasp4b", "rasp5"])  # tiled-vnni, tiled-neon, tiled-dotprod
def test_no_scratch_tile_comes_from_the_workspace_pool(tmp_path, device):
    ir = _llvm_ir(ort_qdq_model(tmp_path / "net.onnx", resolution=16), device)
    assert "define" in ir  # the host code
    small = [n for n in _requests(ir) if n <= MAX_BUFFER_BYTES]
    assert not small, f"{device}: {len(small)} workspace requests of scratch size: {sorted(set(small))}"


def test_the_stack_budget_bounds_what_leaves_the_pool():
    """A function with one tile more than the budget holds: that one stays pooled, larger buffers too,
    and the result is the same either way."""
    import numpy as np
    import tvm
    from tvm import te

    tile = MAX_BUFFER_BYTES // 4  # int32 elements of the largest tile that may go on the stack
    tiles = STACK_BUDGET_BYTES // MAX_BUFFER_BYTES + 1
    x = te.placeholder((tiles + 1, 2 * tile), "int32", "x")  # integers: the sums are exact
    # stages materialised per row and all live at once (the last reads them all): `tiles` tiles of
    # `tile` int32, then one of twice that
    stages = [te.compute((tiles, tile), _times(x, k + 1), f"s{k}") for k in range(tiles)]
    wide = te.compute((tiles, 2 * tile), lambda i, j: sum(s[i, j % tile] for s in stages) + x[i + 1, j], "wide")
    out = te.compute((tiles, 2 * tile), lambda i, j: wide[i, j] * 3, "out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    row = sch.get_loops(sch.get_sblock("out"))[0]
    for name in ["wide", *(f"s{k}" for k in range(tiles))]:
        sch.compute_at(sch.get_sblock(name), row)
    lib = tvm.tirx.build(sch.mod, target="llvm", pipeline=register_pipeline())
    ir = lib.inspect_source("ll")
    assert sorted(_requests(ir)) == [MAX_BUFFER_BYTES, 2 * MAX_BUFFER_BYTES]  # the tile past the budget, the wide one
    data = np.random.default_rng(0).integers(-1000, 1000, (tiles + 1, 2 * tile)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((tiles, 2 * tile), np.int32))
    lib(tvm.runtime.tensor(data), got)
    summed = data[:tiles, :tile] * sum(range(1, tiles + 1))
    want = (np.concatenate([summed, summed], axis=1) + data[1:]) * 3
    np.testing.assert_array_equal(got.numpy(), want)


def _times(x, factor: int):
    return lambda i, j: x[i, j] * factor
