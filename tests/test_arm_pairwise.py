"""``tiled-neon``'s 1x1 convs as ``smull`` + ``smlal2`` + ``sadalp`` (``targets.arm.pairwise``), fast checks.

The compute (codes shifted by 128, 16-channel groups, 4 pairwise lanes per output channel, the
compensation) is built on this host with TVM's default schedule and compared with the exact integer
sum; the ARM schedule is applied and compiled for the Cortex-A72 (LLVM only, no cross toolchain) and
its code checked for the three instructions. Bit-identity of whole models on an emulated Pi is in
``test_arm_schedules.py`` (slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from qfa_deploy.deploy.targets.arm import pairwise
from qfa_deploy.deploy.targets.cpu.integer import INT8_BLOCKS

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


def _conv(channels: int, out_channels: int, height: int, width: int, seed: int = 0):
    """(prim func, codes, packed weights, compensation, the exact result) of one random 1x1 conv."""
    from tvm import te

    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (out_channels, channels)).astype(np.int8)
    zero_point = rng.integers(0, 256, channels)
    codes = rng.integers(0, 256, (1, channels, height, width)).astype(np.uint8)
    packed, comp = pairwise.pack_weight_pairwise(w, zero_point)
    q = te.placeholder(codes.shape, "uint8", "codes")
    pk, cp = te.placeholder(packed.shape, "int8", "packed"), te.placeholder(comp.shape, "int32", "comp")
    out = pairwise._pointwise_pairwise(q, pk, cp, out_channels, INT8_BLOCKS)
    exact = np.einsum("oc,nchw->nohw", w.astype(np.int64), codes.astype(np.int64) - zero_point[None, :, None, None])
    return te.create_prim_func([q, pk, cp, out]), codes, packed, comp, exact


@pytest.mark.parametrize("shape", [(72, 40, 3, 5), (16, 8, 2, 2), (33, 12, 1, 1)])
def test_the_pairwise_compute_is_the_exact_integer_sum(shape):
    """Full 8-bit codes and +-127 weights (the bound's worst case), channels not a multiple of 16."""
    import tvm

    func, codes, packed, comp, exact = _conv(*shape)
    lib = tvm.tirx.build(func, target="llvm")
    out = tvm.runtime.tensor(np.zeros(exact.shape, np.float32))
    lib(*(tvm.runtime.tensor(a) for a in (codes, packed, comp)), out)
    assert np.array_equal(out.numpy(), exact.astype(np.float32))


def test_the_a72_schedule_uses_smull_smlal2_sadalp_and_addp_lane_sums():
    import tvm
    from tvm.s_tir import Schedule

    func, *_ = _conv(72, 40, 8, 8)
    sch = Schedule(func)
    assert pairwise.schedule_pairwise_pointwise(sch, sch.get_child_blocks(sch.get_sblock("root")))
    asm = tvm.tirx.build(sch.mod, target=tvm.target.Target(A72)).inspect_source("asm")
    ops = [line.split()[0] for line in asm.splitlines() if line.startswith("\t") and not line.startswith("\t.")]
    assert {"smull", "smlal2", "sadalp", "addp"} <= set(ops)


def test_a_minus_128_weight_keeps_the_smlal_path():
    """Two products of -128 x -128 overflow an int16 pair: such a conv is not lowered pairwise."""
    w = np.zeros((4, 16), np.int8)
    w[0, 0] = -128
    assert pairwise.lower_pairwise(None, None, w, np.zeros(16, np.int64)) is None
