"""``profile --layers``: where an inference's time goes, per compiled function and kind of layer.

A real QDQ model is compiled for this CPU; the breakdown must account for every call the VM makes
(each kernel by name and count, the VM's builtins in the rest) and name each kernel's kind from the
pipeline's own kernel names.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from deploy_helpers import artifact_dir, ort_qdq_model, run_cli

from qfa_deploy.deploy import compile_artifact, load_device
from qfa_deploy.deploy.layer_times import OTHER, REST, kind_of, summarize
from qfa_deploy.deploy.runner import open_session


@pytest.mark.parametrize("name, kind", [
    ("fused_conv2d_int84_hardswish_codes2_blocked", "1x1 conv, integer"),
    ("fused_conv2d_pairwise3_affine_codes1_blocked", "1x1 conv, integer"),
    ("fused_conv2d_bitserial_multiply_add", "1x1 conv, integer"),
    ("fused_conv2d_codes6_multiply13_add45_blocked_blockedconst", "depthwise conv on codes"),
    ("fused_conv2d_patches_quantize", "stem conv, integer"),
    ("fused_conv2d_gemv9_add65_add66_maximum_imm36_quantize30", "1x1 conv on a 1x1 map (squeeze-excite, head)"),
    ("fused_conv2d1_add2_relu", "conv, float"),
    ("mean5", "global pooling"),
    ("vm.builtin.alloc_tensor", "runtime (allocations, checks)"),
    ("libtvm_runtime.so:tvm::runtime::vm::VirtualMachineImpl::RunLoop", "runtime (allocations, checks)"),
    ("fused_add_quantize", OTHER),
])
def test_kinds_follow_the_pipelines_kernel_names(name, kind):
    assert kind_of(name) == kind


def test_summary_adds_up():
    out = summarize({"fused_conv2d_int8_x": (3.0, 2), "mean1": (1.0, 1), "fused_conv2d_int81_y": (1.0, 1)},
                    runs=5, source="test")
    assert out["sum_ms"] == 5.0 and [f["function"] for f in out["functions"]][0] == "fused_conv2d_int8_x"
    integer = out["kinds"][0]
    assert integer == {"kind": "1x1 conv, integer", "functions": 2, "calls": 3, "ms": 4.0, "share": 0.8}
    uncounted = summarize({"mean1": (1.0, None), "mean2": (1.0, None)}, runs=1, source="sim")
    assert uncounted["kinds"][0]["calls"] is None


@pytest.fixture(scope="module")
def subnet_artifact(tmp_path_factory):
    """A small conv / depthwise / pool / linear QDQ net (compiles in seconds)."""
    tmp = tmp_path_factory.mktemp("layers")
    folder = artifact_dir(tmp / "art", ort_qdq_model(tmp / "model.onnx"))
    meta = compile_artifact(folder / "model.onnx", "x86-1t", folder)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder, meta


def test_every_vm_call_is_accounted_for(subnet_artifact):
    folder, meta = subnet_artifact
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(meta["inputs"][0]["shape"]).astype(np.float32)]
    with open_session(load_device("x86-1t")) as session:
        layers = session.layer_times(folder / "model.so", inputs)
        # an independent count of one inference's calls, by name
        vm = session.load(folder / "model.so")
        seen: Counter = Counter()

        def count(_f, symbol, before, *_rest):
            seen[symbol] += not before
            return 0

        vm.set_instrument(count)
        session.run(vm, inputs)
    calls = {f["function"]: f["calls"] for f in layers["functions"]}
    builtins = sum(n for name, n in seen.items() if name.startswith("vm.builtin."))
    assert calls.pop(REST) == builtins > 0
    assert calls == {name: n for name, n in seen.items() if not name.startswith("vm.builtin.")}
    assert all(f["ms"] > 0 for f in layers["functions"] if f["function"] != REST)
    assert abs(sum(k["ms"] for k in layers["kinds"]) - layers["sum_ms"]) < 1e-9
    assert abs(sum(k["share"] for k in layers["kinds"]) - 1) < 1e-9
    kinds = {k["kind"] for k in layers["kinds"]}
    assert "runtime (allocations, checks)" in kinds and "global pooling" in kinds
    # every conv kernel the pipeline made is named as a conv, whichever schedule this CPU got
    assert all(f["kind"] != OTHER for f in layers["functions"] if "conv2d" in f["function"])


def test_profile_layers_cli(subnet_artifact):
    folder, _ = subnet_artifact
    done = run_cli("profile", str(folder), "--device", "x86-1t", "--layers", "--no-check", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["layers"]["source"].startswith("kernels timed alone") and report["layers"]["functions"]
    human = run_cli("profile", str(folder), "--device", "x86-1t", "--layers", "--no-check")
    assert human.returncode == 0, human.stderr
    assert "slowest" in human.stdout and "global pooling" in human.stdout
    plain = run_cli("profile", str(folder), "--device", "x86-1t", "--no-check", "--json")
    assert json.loads(plain.stdout)["layers"] is None
