"""Depthwise convs summed in int16 lanes where the bound proves it exact (``tiled-dotprod``): the proof,
the codes' range it uses, the compute at the bound, and a whole subnet bit-identical to the float sums."""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pytest

from qfa_deploy.deploy.targets.cpu.integer import (
    _depthwise_from_codes,
    code_deviation,
    depthwise_int16_sums,
    pack_depthwise_weight,
)


def test_the_bound_is_the_sum_of_tap_magnitudes_times_the_widest_code_deviation():
    w = np.zeros((2, 1, 3, 3), np.int8)
    w[0, 0, 0, :] = [-8, 7, 1]  # sum |w| = 16
    zero_point = np.array([3, 0])
    lowest, highest = np.array([0, 0]), np.array([255, 15])
    # channel 0: |q - Z| up to 252 -> 16 * 252 = 4032; channel 1 has no weights
    assert depthwise_int16_sums(w, code_deviation(zero_point, (lowest, highest)))
    w[1] = 127  # 9 taps * 127 * 15 = 17145 <= 32767
    assert depthwise_int16_sums(w, code_deviation(zero_point, (lowest, highest)))
    assert not depthwise_int16_sums(w, code_deviation(zero_point, (lowest, np.array([255, 255]))))  # 9 * 127 * 255
    exact = np.zeros((1, 1, 7, 7), np.int8)
    exact.reshape(-1)[:33] = 1  # 33 taps * 993 = 32769: one over
    assert not depthwise_int16_sums(exact, code_deviation(np.array([0]), (np.array([0]), np.array([993]))))
    assert depthwise_int16_sums(exact, code_deviation(np.array([0]), (np.array([0]), np.array([992]))))  # 32736


@pytest.mark.parametrize("plane", ["int16", "int8"])
def test_int16_sums_at_the_bound_equal_the_exact_conv(plane):
    """Codes and weights chosen so that every output sits at the proven bound (+-32767 or near it), the
    planes int16 (``|q - Z|`` up to 255) or int8 (``|q - Z| <= 127``, NEON's ``smlal``)."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(5)
    channels, size, lanes = 16, 9, 8
    w = rng.integers(-127, 128, (channels, 1, 3, 3)).astype(np.int8)
    w[:, 0, 1, 1] = 127
    zero_point = rng.integers(0, 256, channels)
    # the widest code range the bound allows for each channel's weights (and an int8 plane)
    deviation = 32767 // np.abs(w.astype(np.int64)).reshape(channels, -1).sum(axis=1)
    if plane == "int8":
        w[:, 0, 0, :] = 127  # a larger sum of |w|: the bound holds with |q - Z| <= 127
        deviation = np.minimum(32767 // np.abs(w.astype(np.int64)).reshape(channels, -1).sum(axis=1), 127)
    lowest, highest = np.maximum(zero_point - deviation, 0), np.minimum(zero_point + deviation, 255)
    assert depthwise_int16_sums(w, code_deviation(zero_point, (lowest, highest)))
    # each tap's code at the end of the range that adds |w| * deviation
    extreme = np.where(w[:, 0] > 0, highest[:, None, None], lowest[:, None, None])
    codes = np.tile(extreme, (1, 3, 3))[None].astype(np.uint8)  # period 3: the centre of each 3x3 at the bound
    inside = rng.integers(lowest[:, None, None], highest[:, None, None] + 1, (channels, size, size))
    codes[0] = np.where(rng.random((channels, size, size)) < 0.2, inside, codes[0])  # and some codes in between

    data = te.placeholder(codes.shape, "uint8", "codes")
    weight = te.placeholder((channels // lanes, 3, 3, lanes), plane, "weight")
    zp = te.placeholder((channels,), "int16", "zero_point")
    out = _depthwise_from_codes(data, weight, zp, (1, 1), (1, 1, 1, 1), "int16")
    lib = tvm.compile(te.create_prim_func([data, weight, zp, out]), target="llvm")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (codes, pack_depthwise_weight(w, lanes, plane),
                                                 zero_point.astype(np.int16))]
    result = tvm.runtime.tensor(np.zeros((1, channels, size, size), np.float32), dev)
    lib(*args, result)

    shifted = np.pad(codes[0].astype(np.int64) - zero_point[:, None, None], ((0, 0), (1, 1), (1, 1)))
    expected = sum(w[:, 0, dy, dx, None, None].astype(np.int64) * shifted[:, dy:dy + size, dx:dx + size]
                   for dy in range(3) for dx in range(3))
    assert np.abs(expected).max() > 30000  # the test reaches the bound
    assert np.abs(codes[0].astype(np.int64) - zero_point[:, None, None]).max() <= (127 if plane == "int8" else 255)
    np.testing.assert_array_equal(result.numpy()[0], expected.astype(np.float32))


@pytest.fixture(scope="module")
def smallest_w2a2(tmp_path_factory):
    from deploy_helpers import EXAMPLES

    from qfa_deploy.export.pipeline import ExportConfig, export_subnet

    out = tmp_path_factory.mktemp("int16") / "w2a2"
    export_subnet(ExportConfig(EXAMPLES / "cifar10-smallest-w2a2.json", out, target="x86", calib_batches=0))
    return out


def test_int16_depthwise_subnet_is_bit_identical_to_float_sums(smallest_w2a2, tmp_path, monkeypatch, caplog):
    """The trained smallest W2A2 subnet on this host (``tiled-vnni``): every depthwise conv proven to sum in
    int16 (the codes' range from the clip before each quantize), the logits bit-identical to the same
    build with float32 sums and to one with int8 planes (as the ARM schedules have them)."""
    import json

    from test_artifact_size import _logits

    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.deploy.targets.x86 import vnni

    meta = json.loads((smallest_w2a2 / "meta.json").read_text())
    if meta["compile"]["schedule"] != "tiled-vnni":
        pytest.skip(f"this host compiles x86 with {meta['compile']['schedule']}")
    counts, default = {}, vnni.VNNI
    variants = {"int16": default, "float": dataclasses.replace(default, depthwise_int16_lanes=()),
                "int8": dataclasses.replace(default, depthwise_int8_planes=True)}  # the ARM schedules' planes
    for name, plan in variants.items():
        monkeypatch.setattr(vnni, "VNNI", plan)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="qfa_deploy.deploy.targets.cpu.integer"):
            compile_artifact(smallest_w2a2 / "model.onnx", "x86", tmp_path / name, schedule="tiled-vnni")
        (message,) = [r.getMessage() for r in caplog.records if "summing in int16" in r.getMessage()]
        found = re.search(r"(\d+) depthwise convs read codes \((\d+) of them", message).groups()
        counts[name] = tuple(int(n) for n in found)
    assert counts["int16"][0] == counts["int16"][1] > 0 and counts["float"] == (counts["int16"][0], 0), counts
    assert counts["int8"] == counts["int16"], counts
    images = np.random.default_rng(4).standard_normal((6, 3, 24, 24)).astype(np.float32)
    narrow = _logits(tmp_path / "int16" / "model.so", images)
    np.testing.assert_array_equal(narrow, _logits(tmp_path / "float" / "model.so", images))
    np.testing.assert_array_equal(narrow, _logits(tmp_path / "int8" / "model.so", images))
    np.testing.assert_array_equal(narrow, _logits(smallest_w2a2 / "model.so", images))  # the default is int16
