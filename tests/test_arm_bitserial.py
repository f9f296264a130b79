"""``tiled-neon``'s low-bit 1x1 convs as bit-serial popcounts (``targets.arm.bitserial``), fast checks.

The compute (bit planes of the codes and of the two's complement weights, popcounts of their ANDs
in uint16 pairwise lanes, the weighted lane sums, the compensation) is built on this host with TVM's
default schedule and compared with the exact integer sum for every (weight bits, code bits) pair;
the ARM schedule is applied and compiled for the Cortex-A72 (LLVM only) and its code checked for
``and`` + ``cnt`` + ``uadalp``. Whole models bit-identical on an emulated Pi: ``test_arm_schedules.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from qfa_deploy.deploy.targets.arm import bitserial

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


def _conv(channels: int, out_channels: int, size: int, weight_bits: int, code_bits: int, seed: int = 0):
    """(prim func, codes, weight planes, compensation, the exact result) of one random 1x1 conv whose
    codes and weights span their whole grids (the extremes included)."""
    from tvm import te

    rng = np.random.default_rng(seed)
    low, high = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    w = rng.integers(low, high + 1, (out_channels, channels)).astype(np.int8)
    w[0, :2] = low, high
    codes = rng.integers(0, 1 << code_bits, (1, channels, size, size)).astype(np.uint8)
    codes[0, :, 0, 0] = (1 << code_bits) - 1  # a pixel of top codes: the largest sums
    zero_point = rng.integers(0, 1 << code_bits, channels)
    tile = 4 if code_bits * weight_bits <= 4 else 2
    planes = bitserial.pack_weight_planes(w, bitserial.bits_of_weights(w), tile)
    comp = (w.astype(np.int64) @ zero_point).astype(np.int32)
    q = te.placeholder(codes.shape, "uint8", "codes")
    wp, cp = te.placeholder(planes.shape, "uint8", "planes"), te.placeholder(comp.shape, "int32", "comp")
    out = bitserial._pointwise_bitserial(q, wp, cp, out_channels, code_bits)
    exact = np.einsum("oc,nchw->nohw", w.astype(np.int64), codes.astype(np.int64) - zero_point[None, :, None, None])
    return te.create_prim_func([q, wp, cp, out]), codes, planes, comp, exact


def test_weight_planes_hold_each_weight_in_twos_complement():
    rng = np.random.default_rng(1)
    for bits in (1, 2, 3, 4, 8):
        w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (6, 300)).astype(np.int8)
        assert bitserial.bits_of_weights(w) <= bits
        planes = bitserial.pack_weight_planes(w, bits, 2)  # [O/2, G, 2, bits, 16]
        rebuilt = np.zeros((6, planes.shape[1] * bitserial.GROUP_CHANNELS), np.int64)
        for g in range(planes.shape[1]):
            for r in range(8):
                for m in range(bitserial.GROUP_BYTES):
                    c = bitserial.channel_of(g, r, m)
                    bit = (planes[:, g, :, :, m].reshape(6, bits) >> r) & 1  # [O, bits]
                    signs = np.array([1 << j for j in range(bits - 1)] + [-(1 << (bits - 1))])
                    rebuilt[:, c] = bit @ signs
        np.testing.assert_array_equal(rebuilt[:, :300], w)
        assert not rebuilt[:, 300:].any()  # the padding channels add nothing


@pytest.mark.parametrize("weight_bits,code_bits", [(1, 1), (2, 2), (2, 3), (3, 2), (3, 3), (4, 4), (2, 8)])
def test_the_bitserial_compute_is_the_exact_integer_sum(weight_bits, code_bits):
    """Every pair of bit widths, channels not a multiple of 128 and outputs not of the tile."""
    import tvm

    for shape in ((130, 10, 3), (40, 7, 2)):
        func, codes, planes, comp, exact = _conv(*shape, weight_bits, code_bits)
        lib = tvm.tirx.build(func, target="llvm")
        out = tvm.runtime.tensor(np.zeros(exact.shape, np.float32))
        lib(*(tvm.runtime.tensor(a) for a in (codes, planes, comp)), out)
        np.testing.assert_array_equal(out.numpy(), exact.astype(np.float32))


def test_the_a72_schedule_uses_and_cnt_uadalp():
    import tvm
    from tvm.s_tir import Schedule

    func, *_ = _conv(200, 24, 6, 2, 2)
    sch = Schedule(func)
    assert bitserial.schedule_bitserial_pointwise(sch, sch.get_child_blocks(sch.get_sblock("root")))
    asm = tvm.tirx.build(sch.mod, target=tvm.target.Target(A72)).inspect_source("asm")
    ops = [line.split()[0] for line in asm.splitlines() if line.startswith("\t") and not line.startswith("\t.")]
    assert {"and", "cnt", "uadalp"} <= set(ops)


def test_bitserial_is_chosen_where_its_pairs_are_few_and_the_channels_many():
    assert bitserial.prefers_bitserial(576, 2, 2)  # 4 pairs: 36 against 72 cycles
    assert bitserial.prefers_bitserial(192, 2, 2)
    assert bitserial.prefers_bitserial(576, 3, 2)
    assert not bitserial.prefers_bitserial(96, 2, 2)  # padded to 128 channels: no gain
    assert not bitserial.prefers_bitserial(576, 4, 4)  # 16 pairs: more than the multiplies
    assert not bitserial.prefers_bitserial(576, 3, 3)


def test_a_tables_part_with_bits_runs_the_bit_planes_and_its_highest_bits_part_does_not(tmp_path):
    """What ``lut build`` measures for the Pi 4 (``lut.bit_kernels``): the project conv of a part keyed
    at W2A2 (240 input channels) compiles to the bit-serial kernel, the same part at W4A4 to the multiplies."""
    import subprocess

    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.lut.keys import LatencyKey
    from qfa_deploy.lut.parts import PartModels

    models = PartModels("qfa-mbv3-cifar10", 32)
    found = {}
    for bits in ((), (4, 4, 2, 4, 4, 2)):
        key = LatencyKey("block", 2, 80, 240, 80, 3, 1, True, "hswish", bits)
        folder = tmp_path / str(len(bits))
        folder.mkdir()
        (folder / "part.onnx").write_bytes(models.part(key).SerializeToString())
        meta = compile_artifact(folder / "part.onnx", "rasp4b-sim", folder)
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(folder / meta["library"])],
                                 capture_output=True, text=True, check=True).stdout
        found[bits] = {name for name in ("bitserial", "pairwise") if f"conv2d_{name}" in symbols}
    assert found == {(): {"pairwise"}, (4, 4, 2, 4, 4, 2): {"bitserial", "pairwise"}}  # the expand conv: 80 channels
