"""Integer convs reading channel-blocked codes out of a writer's narrower tiles (the A72: 1x1 convs in
4-channel tiles, depthwise convs on 8-channel int8 planes, 1x1 convs packing 16-channel groups): the
stage copying a block gathers it with one contiguous load per tile, not byte by byte
(``integer_schedule.vectorize_gather``), and the depthwise conv still computes the exact sums."""

from __future__ import annotations

import re

import numpy as np

from qfa_deploy.deploy.targets.arm import pairwise
from qfa_deploy.deploy.targets.arm.neon import NEON_INT8
from qfa_deploy.deploy.targets.cpu.blocked_codes import _relaid
from qfa_deploy.deploy.targets.cpu.integer import DEPTHWISE_BLOCKS, INT8_BLOCKS, _depthwise_from_codes
from qfa_deploy.deploy.targets.cpu.integer_schedule import schedule_depthwise_blocked

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
TILE = 4  # the writer's tile: the codes arrive as [N, C/4, H, W, 4]


def _scheduled(channels=16, size=9, seed=0):
    """(scheduled module, blocked codes, weights [C/8, 3, 3, 8], zero points, the exact sums NCHW)."""
    from tvm import te
    from tvm.s_tir import Schedule

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (1, channels, size, size)).astype(np.uint8)
    zero_point = rng.integers(0, 16, channels).astype(np.int16)
    weight = rng.integers(-8, 8, (channels // 8, 3, 3, 8)).astype(np.int8)
    q = te.placeholder(codes.shape, "uint8", "codes")
    w, z = te.placeholder(weight.shape, "int8", "weight"), te.placeholder(zero_point.shape, "int16", "zero_point")
    out = _depthwise_from_codes(q, w, z, (1, 1), (1, 1, 1, 1), sums="int16")
    func = _relaid(te.create_prim_func([q, w, z, out]), DEPTHWISE_BLOCKS[0], TILE)
    sch = Schedule(func)
    assert schedule_depthwise_blocked(sch, sch.get_child_blocks(sch.get_sblock("root")), NEON_INT8)
    blocked = np.ascontiguousarray(codes.reshape(1, channels // TILE, TILE, size, size).transpose(0, 1, 3, 4, 2))
    taps = weight.transpose(0, 3, 1, 2).reshape(channels, 3, 3).astype(np.int64)
    padded = np.pad(codes.astype(np.int64) - zero_point[None, :, None, None], ((0, 0), (0, 0), (1, 1), (1, 1)))
    exact = sum(padded[:, :, i:i + size, j:j + size] * taps[None, :, i, j, None, None]
                for i in range(3) for j in range(3))
    return sch.mod, blocked, weight, zero_point, exact


def test_the_gather_from_narrower_tiles_is_exact():
    import tvm

    mod, blocked, weight, zero_point, exact = _scheduled()
    lib = tvm.tirx.build(mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros(exact.shape, np.float32))
    lib(*(tvm.runtime.tensor(a) for a in (blocked, weight, zero_point)), out)
    assert np.array_equal(out.numpy(), exact.astype(np.float32))


def _byte_lane_loads(mod) -> int:
    import tvm

    asm = tvm.tirx.build(mod, target=tvm.target.Target(A72)).inspect_source("asm")
    return len(re.findall(r"ld1\s+\{\s*v\d+\.b\s*\}\[\d+\]", asm))


def test_the_a72_depthwise_gathers_whole_tiles_not_bytes():
    mod, *_ = _scheduled()
    assert _byte_lane_loads(mod) == 0


def test_the_a72_pairwise_packing_gathers_whole_tiles_not_bytes():
    """A 1x1 conv after a depthwise conv: 16-channel groups out of 8-channel blocks."""
    from tvm import te
    from tvm.s_tir import Schedule

    channels, out_channels, size = 48, 16, 6
    w = np.random.default_rng(0).integers(-8, 8, (out_channels, channels)).astype(np.int8)
    packed, comp = pairwise.pack_weight_pairwise(w, np.zeros(channels, np.int64))
    q = te.placeholder((1, channels, size, size), "uint8", "codes")
    pk, cp = te.placeholder(packed.shape, "int8", "packed"), te.placeholder(comp.shape, "int32", "comp")
    out = pairwise._pointwise_pairwise(q, pk, cp, out_channels, INT8_BLOCKS)
    sch = Schedule(_relaid(te.create_prim_func([q, pk, cp, out]), INT8_BLOCKS[0], 8))
    assert pairwise.schedule_pairwise_pointwise(sch, sch.get_child_blocks(sch.get_sblock("root")))
    assert _byte_lane_loads(sch.mod) == 0


def test_the_a76_sdot_packing_reads_whole_pixels_not_bytes():
    """A 1x1 conv after a depthwise conv on the A76: 4-channel groups shifted by 128 out of 8-channel
    blocks, each pixel's 4 codes one load (LLVM's own vectorization gathered 16 bytes lane by lane)."""
    from tvm import te
    from tvm.s_tir import Schedule

    from qfa_deploy.deploy.targets.arm.neon import DOTPROD, register_intrinsics
    from qfa_deploy.deploy.targets.cpu.integer import _pointwise_int8, pack_weight
    from qfa_deploy.deploy.targets.cpu.integer_schedule import schedule_int8_pointwise

    register_intrinsics()
    channels, out_channels, size = 16, 16, 56  # a long row: LLVM vectorized the copy over 16 of its pixels
    w = np.random.default_rng(0).integers(-8, 8, (out_channels, channels)).astype(np.int8)
    packed, comp = pack_weight(w, np.zeros(channels, np.int64), 16, DOTPROD.group, DOTPROD.code_offset)
    q = te.placeholder((1, channels, size, size), "uint8", "codes")
    pk, cp = te.placeholder(packed.shape, "int8", "packed"), te.placeholder(comp.shape, "int32", "comp")
    out = _pointwise_int8(q, pk, cp, out_channels, DOTPROD.code_offset)
    sch = Schedule(_relaid(te.create_prim_func([q, pk, cp, out]), INT8_BLOCKS[0], 8))
    assert schedule_int8_pointwise(sch, sch.get_child_blocks(sch.get_sblock("root")), DOTPROD)
    a76 = {**A72, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
    import tvm

    asm = tvm.tirx.build(sch.mod, target=tvm.target.Target(a76)).inspect_source("asm")
    assert "sdot" in asm
    assert len(re.findall(r"ld1\s+\{\s*v\d+\.b\s*\}\[\d+\]", asm)) == 0


def test_the_a76_reads_codes_below_128_in_place_two_words_a_load():
    """Codes of at most 7 bits (every grid of the search space) are int8s already: the A76's 1x1 conv
    reads the codes blocked in eights in place (no shifting pass, no copy), a pixel's two words in one
    load and each ``sdot`` taking its word as a lane (no ``ld1r``); 8-bit codes keep the shift by 128
    and its compensation, packed in eights for the same kernel; codes blocked in sixteens keep ``ld1r``."""
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    from qfa_deploy.deploy.targets.arm.neon import DOTPROD, register_intrinsics
    from qfa_deploy.deploy.targets.cpu.integer import _pointwise_int8, pack_weight
    from qfa_deploy.deploy.targets.cpu.integer_schedule import schedule_int8_pointwise

    assert DOTPROD.offset_for(4) == DOTPROD.offset_for(7) == 0 and DOTPROD.offset_for(8) == 128
    register_intrinsics()
    channels, out_channels, size = 32, 16, 14
    w = np.random.default_rng(1).integers(-8, 8, (out_channels, channels)).astype(np.int8)
    a76 = {**A72, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
    found = {}
    for bits, block in ((4, 8), (8, 8), (4, 16)):
        offset = DOTPROD.offset_for(bits)
        packed, comp = pack_weight(w, np.zeros(channels, np.int64), 8, DOTPROD.group, offset)
        q = te.placeholder((1, channels, size, size), "uint8", "codes")
        pk, cp = te.placeholder(packed.shape, "int8", "packed"), te.placeholder(comp.shape, "int32", "comp")
        out = _pointwise_int8(q, pk, cp, out_channels, offset)
        sch = Schedule(_relaid(te.create_prim_func([q, pk, cp, out]), INT8_BLOCKS[0], block))
        assert schedule_int8_pointwise(sch, sch.get_child_blocks(sch.get_sblock("root")), DOTPROD)
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        asm = tvm.tirx.build(sch.mod, target=tvm.target.Target(a76)).inspect_source("asm")
        found[bits, block] = (INT8_BLOCKS[0] in names, len(re.findall(r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[", asm)),
                              len(re.findall(r"\bld1r\b", asm)))
    assert found[4, 8][0] is False and found[4, 8][1] > 0 and found[4, 8][2] == 0, found
    assert found[8, 8][0] is True and found[8, 8][1] > 0 and found[8, 8][2] == 0, found
    assert found[4, 16][0] is False and found[4, 16][1] == 0 and found[4, 16][2] > 0, found
