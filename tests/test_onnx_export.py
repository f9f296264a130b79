"""QDQ ONNX export: structure, and parity of onnxruntime and TVM x86 with the PyTorch eval subnet.

Parity is checked quantizer by quantizer with teacher forcing: the ONNX model exposes the uint8
codes of every QuantizeLinear, and PyTorch reruns on those codes (``pytorch_codes(...,
forced_codes=...)``), so each quantizer is compared on identical upstream codes. The free-running
differences are printed too (one rounding tie can cascade through a deep random net).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from export_helpers import (
    ALL_PAIRS,
    SPACE,
    argmax_agrees,
    bit_pairs,
    calibrated,
    code_diffs,
    images,
    perturbed_supernet,
    random_cfg,
)
from onnx import TensorProto, numpy_helper

from qfa_deploy.arch import ArchConfig
from qfa_deploy.export.onnx_export import DEFAULT_OPSET, export_onnx, model_metadata
from qfa_deploy.export.verify import ort_runner, pytorch_codes, tvm_x86_runner
from qfa_deploy.fold import fold
from qfa_deploy.quant.lsq import signed_range

CONFIGS = {
    "random0": random_cfg(0),
    "random1": random_cfg(1),
    "random4": random_cfg(4),
    "random6": random_cfg(6),
    "smallest-w2a2": ArchConfig.smallest(SPACE, 2),
    "largest-w4a4": ArchConfig.largest(SPACE, 4),
}
TVM_FAST = ("random6",)  # every (w, a) pair; one TVM build keeps the default run short
TVM_SLOW = ("random0", "smallest-w2a2", "largest-w4a4")
N_IMAGES = 16


@pytest.fixture(scope="module")
def supernet(cifar_supernet):
    return perturbed_supernet(cifar_supernet)


@pytest.fixture(scope="module")
def exported(supernet):
    """name -> (subnet, folded, model exposing codes), built on first use."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cfg = CONFIGS[name]
            subnet = calibrated(supernet, cfg, seed=len(name))
            folded = fold(subnet)
            cache[name] = (subnet, folded, export_onnx(folded, expose_codes=True))
        return cache[name]

    return get


def _outputs(model: onnx.ModelProto, values: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    names = [o.name for o in model.graph.output]
    assert names[0] == "logits"
    return values[0], {n.removesuffix("/quant"): v for n, v in zip(names[1:], values[1:], strict=True)}


def _check_against_pytorch(subnet, x, logits: np.ndarray, codes: dict, label: str, capsys) -> None:
    forced_logits, own_codes = pytorch_codes(subnet, x, forced_codes=codes)
    free_logits, free_codes = pytorch_codes(subnet, x)
    worst, differing, total = code_diffs(own_codes, codes)
    diff = float(np.abs(forced_logits.numpy() - logits).max())
    free_worst, free_differing, _ = code_diffs(free_codes, codes)
    free_diff = float(np.abs(free_logits.numpy() - logits).max())
    scale = float(np.abs(free_logits.numpy()).max())
    with capsys.disabled():
        print(
            f"\n  {label:28s} forced: max|dlogit| {diff:.1e}, codes max diff {worst} ({differing}/{total}); "
            f"free-running: max|dlogit| {free_diff:.1e} (logits up to {scale:.1f}), "
            f"codes max diff {free_worst} ({free_differing} differ)"
        )
    assert len(codes) == len(subnet.quant_convs())
    assert worst <= 1 and differing <= 1e-5 * total
    assert diff <= 1e-4 * max(scale, 1.0)
    assert argmax_agrees(forced_logits.numpy(), logits, diff)
    if free_worst == 0:
        assert free_diff <= 1e-4 * max(scale, 1.0)


def test_configs_cover_every_bit_pair():
    assert set().union(*(bit_pairs(CONFIGS[n]) for n in TVM_FAST)) == ALL_PAIRS
    assert set().union(*(bit_pairs(c) for c in CONFIGS.values())) == ALL_PAIRS


def test_graph_structure_and_metadata(exported):
    subnet, folded, _ = exported("random0")
    model = export_onnx(folded)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert model.opset_import[0].version == DEFAULT_OPSET
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, subnet.arch.resolution, subnet.arch.resolution]
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT

    nodes = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    assert all(t.data_type not in (TensorProto.INT4, TensorProto.UINT4) for t in graph.initializer)
    for conv in folded.convs():
        n = conv.name
        q = nodes[f"{n}/quant"]
        assert q.op_type == "QuantizeLinear" and nodes[f"{n}/dequant"].op_type == "DequantizeLinear"
        zp = inits[q.input[2]]
        assert zp.data_type == TensorProto.UINT8 and numpy_helper.to_array(zp).shape == ()
        assert int(numpy_helper.to_array(zp)) == conv.act_quant.zero_point
        assert (f"{n}/quant/clip" in nodes) == (conv.a_bits < 8)
        assert (f"{n}/quant/shift" in nodes) == (conv.act_quant.shift != 0.0)
        # the codes and the weights dequantize to integers (scale 1): the Conv sums are exact
        dq = nodes[f"{n}/dequant"]
        assert float(numpy_helper.to_array(inits[dq.input[1]])) == 1.0 and dq.input[2] == q.input[2]
        wdq = nodes[f"{n}/weight"]
        assert wdq.op_type == "DequantizeLinear" and not wdq.attribute
        w = inits[wdq.input[0]]
        assert w.data_type == TensorProto.INT8
        lo, hi = signed_range(conv.w_bits)
        w_int = numpy_helper.to_array(w)
        assert w_int.min() >= lo and w_int.max() <= hi and np.array_equal(w_int, conv.weight)
        assert float(numpy_helper.to_array(inits[wdq.input[1]])) == 1.0
        assert len(nodes[f"{n}/conv"].input) == 2  # the bias is a separate Add (see onnx_export)
        assert np.array_equal(numpy_helper.to_array(inits[f"{n}/multiplier"]).ravel(), conv.multiplier)
        assert (f"{n}/bias/map" in nodes) == conv.border_classes
    assert "stage0/block0/expand/quant" in nodes and "stage1/block1/depthwise/quant" in nodes

    meta = model_metadata(model)
    assert meta["qfa.arch"] == subnet.arch.canonical_json()
    assert ArchConfig.from_dict(json.loads(meta["qfa.arch"])) == subnet.arch
    assert meta["qfa.space"] == SPACE
    bits = json.loads(meta["qfa.bits"])
    assert bits["convs"] == len(folded.convs()) and bits["per_conv"]["stem"] == "w8a8"
    assert set(json.loads(meta["qfa.versions"])) == {"qfa_deploy", "torch", "onnx"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_onnxruntime_matches_pytorch(exported, name, capsys):
    subnet, folded, model = exported(name)
    x = images(subnet.arch, N_IMAGES, seed=len(name))
    logits, codes = _outputs(model, ort_runner(model, optimize=False)(x.numpy()))
    _check_against_pytorch(subnet, x, logits, codes, f"ort no-opt  {name}", capsys)

    # what users run: the production graph (no code outputs) with onnxruntime's default optimisations
    plain = export_onnx(folded)
    reference = ort_runner(plain, optimize=False)(x.numpy())[0]
    default = ort_runner(plain, optimize=True)(x.numpy())[0]
    diff = float(np.abs(default - reference).max())
    with capsys.disabled():
        print(f"  {'ort default ' + name:28s} vs ort no-opt: max|dlogit| {diff:.1e}")
    assert np.abs(reference - logits).max() <= 1e-6 * max(float(np.abs(logits).max()), 1.0)
    assert diff <= 1e-4 * max(float(np.abs(reference).max()), 1.0)


def _tvm_case(exported, name, capsys):
    subnet, _, model = exported(name)
    x = images(subnet.arch, N_IMAGES, seed=len(name))
    logits, codes = _outputs(model, tvm_x86_runner(model, N_IMAGES)(x.numpy()))
    _check_against_pytorch(subnet, x, logits, codes, f"tvm x86     {name}", capsys)
    ort_logits, ort_codes = _outputs(model, ort_runner(model, optimize=False)(x.numpy()))
    worst, differing, _ = code_diffs(ort_codes, codes)
    with capsys.disabled():
        print(
            f"  {'tvm vs ort ' + name:28s} max|dlogit| {np.abs(ort_logits - logits).max():.1e}, "
            f"codes max diff {worst} ({differing} differ)"
        )


@pytest.mark.parametrize("name", TVM_FAST)
def test_tvm_x86_matches_pytorch(exported, name, capsys):
    _tvm_case(exported, name, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", TVM_SLOW)
def test_tvm_x86_matches_pytorch_more_configs(exported, name, capsys):
    _tvm_case(exported, name, capsys)


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets_import_in_onnxruntime_and_tvm(exported, opset):
    from tvm.relax.frontend.onnx import from_onnx

    subnet, folded, _ = exported("smallest-w2a2")
    model = export_onnx(folded, opset=opset)
    assert model.opset_import[0].version == opset
    x = images(subnet.arch, 4).numpy()
    expected = ort_runner(export_onnx(folded), optimize=False)(x)[0]
    got = ort_runner(model, optimize=False)(x)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    r = subnet.arch.resolution
    mod = from_onnx(model, shape_dict={"input": [4, 3, r, r]})
    assert "main" in [gv.name_hint for gv in mod.get_global_vars()]


def test_unsupported_opset_is_refused(exported):
    _, folded, _ = exported("smallest-w2a2")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(folded, opset=12)


@pytest.mark.slow
def test_checkpoint_agreement_on_cifar10_test_set(capsys):
    """Top-1 of PyTorch, onnxruntime (no-opt and default) and TVM x86 agree on >= 99.9% of the
    CIFAR-10 test set for the largest, the smallest and 5 random subnets of the reference checkpoint
    (``$QFA_CHECKPOINT`` overrides the embedded one)."""
    import random

    import torch

    from qfa_deploy.arch import sample_arch
    from qfa_deploy.commands.common import load_supernet
    from qfa_deploy.data import load_splits
    from qfa_deploy.errors import QfaError
    from qfa_deploy.export.verify import checkpoint_agreement
    from qfa_deploy.reference import default_checkpoint

    path = os.environ.get("QFA_CHECKPOINT")
    if not path:
        try:
            path = str(default_checkpoint())
        except QfaError:
            pytest.skip("no reference checkpoint embedded yet (qfa_deploy/assets/) and $QFA_CHECKPOINT unset")
    net = load_supernet(path)
    space = net.space.name
    rng = random.Random(2021)
    cfgs = [ArchConfig.largest(space), ArchConfig.smallest(space)] + [sample_arch(space, rng) for _ in range(5)]
    splits = load_splits(net.space)
    limit = int(os.environ.get("QFA_AGREEMENT_LIMIT", "0")) or None
    test = splits.test.subset(limit) if limit else splits.test
    reports = checkpoint_agreement(net, cfgs, splits.val, test, threads=torch.get_num_threads())
    with capsys.disabled():
        for rep in reports:
            print(f"\n  {rep['arch']}")
            for runtime, r in rep["runtimes"].items():
                print(
                    f"    {runtime:12s} top-1 {100 * r['top1']:6.2f}%  agreement {100 * r['agreement']:7.3f}%  "
                    f"max|dlogit| {r['max_abs_logit_diff']:.2e}  disagreements {r['disagreements']} "
                    f"(PyTorch top-2 margin <= {r['max_margin_of_disagreements']:.3g})"
                )
    for rep in reports:
        for runtime, r in rep["runtimes"].items():
            assert r["agreement"] >= 0.999, (rep["arch"], runtime, r)
