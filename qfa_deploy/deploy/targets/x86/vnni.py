"""``tiled-vnni``: 1x1 convs as uint8 x int8 dot products on AVX512-VNNI's ``vpdpbusd``.

64 products per instruction (four times the multiply-adds of a float FMA), in tiles of 16 output
channels (a zmm of int32) or 8 (a ymm) where that avoids padding, up to 28 pixels of a row; depthwise
convs channel-blocked in 16 (or 8) float lanes, their weights stored as int8 and converted to float
where the conv reads them (exact: a quarter of the bytes, measured no slower); everything else as
``tiled-cpu`` (``AVX2``'s tiles).

Our own intrinsic, not TVM's ``dot_16x4_vnni``: that one passes the byte operands as <16 x i32>
where the LLVM TVM 0.27 is built with (22) declares ``llvm.x86.avx512.vpdpbusd.512`` on <64 x i8>,
and importing ``tvm.s_tir.tensor_intrin`` parses every target's intrinsics (~35 s).
"""

from __future__ import annotations

from qfa_deploy.deploy.registry import VectorUnit
from qfa_deploy.deploy.targets.cpu.integer import IntegerPlan, integer_rewrite

__all__ = ["AVX2", "AVX512", "VNNI", "register_intrinsics", "rewrite", "schedule"]

AVX2 = VectorUnit(bits=256, registers=16)  # the float tiles (AVX-512 hosts run these 256-bit tiles too)
AVX512 = VectorUnit(bits=512, registers=32)
_WIDTHS = (16, 8)  # int32 lanes of a zmm, a ymm: one vpdpbusd each


def _intrinsic_name(lanes: int, codes: str = "uint8") -> str:
    if codes != "uint8":  # the plan has no code offset: vpdpbusd reads the codes as they are
        raise ValueError(f"vpdpbusd takes uint8 codes, not {codes}")
    return f"qfa_vnni_dot_{lanes}x4"


# depthwise sums in int16 where proven to fit (16 lanes a ymm, half the loads of float32 taps; measured
# one thread, same process, bit-identical: CIFAR-10 largest 0.874x, w1.2-0 @224 0.934x; zmm's 32 lanes
# were slower, 1.09x)
VNNI = IntegerPlan(
    name="tiled-vnni", unit=AVX512, pointwise_lanes=_WIDTHS, depthwise_lanes=_WIDTHS, group=4,
    dot=_intrinsic_name, dot_lanes=16, depthwise_weight="int8", depthwise_int16_lanes=_WIDTHS,
)


def register_intrinsics() -> None:
    """Register the ``vpdpbusd`` tensor intrinsics (a zmm's and a ymm's) in this process."""
    from qfa_deploy.deploy.targets.cpu.dot_intrinsic import register_dot_intrinsic

    for lanes in _WIDTHS:
        register_dot_intrinsic(_intrinsic_name(lanes), f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", lanes, "uint8")


def rewrite(mod):
    """Before legalization: ``integer_rewrite`` (integer convs on the codes, the epilogue's divisions and
    clip bounds without loads or divisions)."""
    return integer_rewrite(mod, VNNI, AVX2.lanes())


def schedule(mod):
    """After fusion: the integer convs tiled and tensorized on VNNI, the rest as ``tiled-cpu``."""
    from qfa_deploy.deploy.targets.cpu.integer_schedule import integer_schedule

    register_intrinsics()
    return integer_schedule(mod, VNNI, AVX2)
