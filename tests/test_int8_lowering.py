"""tiled-vnni: integer convs on the uint8 codes (1x1 as VNNI dot products), bit-identical to the float build."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from deploy_helpers import EXAMPLES, FAST_PROTOCOL, artifact_dir, device_file, exported_subnet_model

from qfa_deploy.deploy import compile_artifact, load_device
from qfa_deploy.deploy.targets.cpu.integer import pack_depthwise_weight, pack_weight
from qfa_deploy.deploy.targets.x86.vnni import VNNI
from qfa_deploy.errors import QfaError


def _host_has_vnni() -> bool:
    from tvm.target.codegen import target_has_features

    return bool(target_has_features("avx512vnni", load_device("x86").tvm_target()))


@pytest.fixture(scope="module")
def fast_x86(tmp_path_factory):
    return device_file(tmp_path_factory.mktemp("devices"), "x86", name="x86-fast", protocol=FAST_PROTOCOL)


def test_packed_weights_and_zero_point_compensation():
    rng = np.random.default_rng(0)
    w = rng.integers(-8, 8, (40, 36)).astype(np.int8)  # 40 outputs: not a multiple of 16, padded
    zero_point = rng.integers(0, 16, 36)
    packed, comp = pack_weight(w, zero_point, 16)
    assert packed.shape == (3, 9, 16, 4) and packed.dtype == np.int8 and packed.flags.c_contiguous
    o, c = np.meshgrid(np.arange(40), np.arange(36), indexing="ij")
    np.testing.assert_array_equal(packed[o // 16, c // 4, o % 16, c % 4], w)  # where the dot product reads it
    assert not packed[2, :, 8:, :].any()  # padded output channels are zero
    assert VNNI.tile_lanes(40) == 8 and VNNI.tile_lanes(48) == 16  # ymm tiles where they fit
    assert VNNI.tile_lanes(36) == 16  # else zmm tiles, padded
    narrow, narrow_comp = pack_weight(w, zero_point, 8)
    assert narrow.shape == (5, 9, 8, 4)
    np.testing.assert_array_equal(narrow[o // 8, c // 4, o % 8, c % 4], w)
    np.testing.assert_array_equal(narrow_comp, comp)
    codes = rng.integers(0, 16, (36, 5))
    exact = w.astype(np.int64) @ (codes - zero_point[:, None])  # the conv on (q - Z)
    np.testing.assert_array_equal(w.astype(np.int64) @ codes - comp[:, None], exact)
    assert comp.dtype == np.int32


def test_depthwise_weights_are_blocked_one_vector_per_tap():
    rng = np.random.default_rng(1)
    w = rng.integers(-8, 8, (72, 1, 5, 5)).astype(np.int8)
    lanes = VNNI.depthwise_block(72)
    assert lanes == 8 and VNNI.depthwise_block(192) == 16  # a zmm of floats where the channels allow it
    assert VNNI.depthwise_block(36) is None  # left to the float conv
    blocked = pack_depthwise_weight(w, lanes)
    assert blocked.shape == (9, 5, 5, 8) and blocked.dtype == np.float32 and blocked.flags.c_contiguous
    c, ky, kx = np.meshgrid(np.arange(72), np.arange(5), np.arange(5), indexing="ij")
    np.testing.assert_array_equal(blocked[c // 8, ky, kx, c % 8], w[:, 0])  # where the conv reads tap (ky, kx)


def test_position_constants_are_blocked_where_the_tile_reads_them():
    from qfa_deploy.deploy.targets.cpu.blocked_constants import _block

    bias = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8, 3, 5)
    blocked = _block(bias, 4)
    assert blocked.shape == (2, 3, 5, 4) and blocked.flags.c_contiguous
    for c, y, x in np.ndindex(bias.shape):
        assert blocked[c // 4, y, x, c % 4] == bias[c, y, x]  # the index map the function's buffer gets


@pytest.mark.skipif(not _host_has_vnni(), reason="this CPU has no AVX512-VNNI")
def test_tiled_vnni_is_bit_identical_to_tiled_cpu(tmp_path, fast_x86, cifar_supernet, caplog):
    from qfa_deploy.deploy.parity import compare_outputs, onnxruntime_outputs, random_inputs
    from qfa_deploy.deploy.runner import open_session

    onnx_path = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet, seed=7)
    outputs = {}
    for schedule in ("tiled-vnni", "tiled-cpu"):
        folder = artifact_dir(tmp_path / schedule, onnx_path)
        with caplog.at_level(logging.INFO, logger="qfa_deploy"):
            meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
        assert meta["schedule"] == schedule
        with open_session(load_device(str(fast_x86))) as session:
            vm = session.load(folder / "model.so")
            outputs[schedule] = [session.run(vm, random_inputs(meta["inputs"], seed=s))[0] for s in range(2)]
    (lowered,) = [r.getMessage() for r in caplog.records if "1x1 convs lowered" in r.getMessage()]
    pointwise, depthwise = (int(n) for n in re.findall(r"(\d+) (?:1x1|depthwise) convs", lowered))
    assert pointwise > 0 and depthwise > 0, lowered
    assert not [r for r in caplog.records if "not scheduled" in r.getMessage()]
    (scheduled,) = [r.getMessage() for r in caplog.records if "functions channel-blocked" in r.getMessage()]
    tensorized, blocked = (int(n) for n in re.findall(r"(\d+) (?:int8 pointwise|depthwise) functions", scheduled))
    assert tensorized > 0 and blocked > 0, scheduled
    (edges,) = [r.getMessage() for r in caplog.records if "hand their codes over channel-blocked" in r.getMessage()]
    assert int(re.search(r"(\d+) integer conv -> integer conv edges", edges).group(1)) > 0, edges
    for s, (vnni, tiled) in enumerate(zip(outputs["tiled-vnni"], outputs["tiled-cpu"], strict=True)):
        np.testing.assert_array_equal(vnni, tiled)
        parity = compare_outputs([vnni], onnxruntime_outputs(onnx_path, meta["inputs"],
                                                             random_inputs(meta["inputs"], seed=s)))
        assert parity["max_abs_diff"] <= 1e-5 and parity["argmax_agree"], parity


def test_tiled_vnni_needs_a_vnni_target(tmp_path, cifar_supernet):
    device = device_file(tmp_path, "x86", name="x86-haswell", target={"kind": "llvm", "mcpu": "haswell"})
    onnx_path = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet, seed=7)
    with pytest.raises(QfaError, match="tiled-vnni needs a CPU with avx512vnni"):
        compile_artifact(onnx_path, str(device), tmp_path / "out", schedule="tiled-vnni")
    assert not (tmp_path / "out" / "model.so").exists()


@pytest.mark.skipif(not _host_has_vnni(), reason="this CPU has no AVX512-VNNI")
def test_trained_subnet_reads_its_border_biases_blocked(tmp_path, fast_x86, caplog):
    """The trained supernet's depthwise convs add a per-position border bias ([C, H, W]; a random
    supernet calibrated on noise has none): stored channel-blocked, the artifact still equals
    onnxruntime."""
    from qfa_deploy.arch import load_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import calibration_images
    from qfa_deploy.deploy.parity import compare_outputs, onnxruntime_outputs, random_inputs
    from qfa_deploy.deploy.runner import open_session
    from qfa_deploy.export.onnx_export import export_onnx, save_onnx
    from qfa_deploy.extract import extract
    from qfa_deploy.fold import fold
    from qfa_deploy.reference import default_checkpoint

    supernet = load_supernet(default_checkpoint())
    cfg = load_arch(EXAMPLES / "cifar10-smallest-w2a2.json", expect_space=supernet.space.name)
    subnet = extract(supernet, cfg)
    calibrate(subnet, (x for x, _ in calibration_images(supernet.space, images=200).batches(100)), cfg.resolution, 2)
    onnx_path = tmp_path / "subnet.onnx"
    save_onnx(export_onnx(fold(subnet.eval()), batch=1), onnx_path)
    folder = artifact_dir(tmp_path / "vnni", onnx_path)
    with caplog.at_level(logging.INFO, logger="qfa_deploy"):
        meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule="tiled-vnni")
    (constants,) = [r.getMessage() for r in caplog.records if "per-position constants" in r.getMessage()]
    assert int(re.search(r"(\d+) per-position constants", constants).group(1)) > 0, constants
    with open_session(load_device(str(fast_x86))) as session:
        vm = session.load(folder / "model.so")
        for s in range(2):
            inputs = random_inputs(meta["inputs"], seed=s)
            parity = compare_outputs(session.run(vm, inputs), onnxruntime_outputs(onnx_path, meta["inputs"], inputs))
            assert parity["max_abs_diff"] <= 1e-5 and parity["argmax_agree"], parity
