"""Integer schedules for aarch64: ``tiled-neon`` (Cortex-A72, Pi 4) and ``tiled-dotprod`` (Cortex-A76, Pi 5).

Both compute the 1x1 convs (and the integer GEMVs) on the uint8 codes and int8 weights with exact
int32 sums, the zero-point compensation and epilogue as on x86 (``targets.cpu.integer``), the
depthwise convs channel-blocked in 4 float32 lanes (one NEON register), and hand the codes from one
integer conv to the next channel-blocked.

- ``tiled-neon`` (ARMv8.0, no dot product): 8-bit-lane widening multiplies, ``smull`` + ``smlal2``
  + ``sadalp`` per 16 channels of a pixel and an output channel, in tiles of 4 pixels x 4 output
  channels (``targets.arm.pairwise``: 8 products per cycle of the A72's multiply pipe). A conv with a
  -128 weight (none of the b-bit grids has one) keeps the widening multiply-accumulate path: a tile
  of 8 (or 4) output channels x up to 14 pixels of a row, each step one code (broadcast) times 8
  weights into int32 by ``smlal``/``smlal2`` (4 products per cycle). Where the codes' and weights' bits
  are few and the channels many (``bitserial.prefers_bitserial``: W2A2 from 128 input channels, W2A3/W3A2
  from 384), the 1x1 conv runs on bit planes instead (``targets.arm.bitserial``: ``and`` + ``cnt`` +
  ``uadalp``, on both NEON pipes): the Pi 4's only kernel whose cost follows the bits.
- ``tiled-dotprod`` (ARMv8.2 dot product): ``sdot`` sums 4 int8 x int8 products into each int32 lane,
  16 per instruction. Codes are unsigned, weights signed and ``usdot`` needs the i8mm extension the
  A76 lacks. Codes of at most 7 bits (every b-bit grid of the search space) are non-negative int8s
  already: ``sdot`` reads the uint8 codes in place, exactly. 8-bit codes are shifted to ``q - 128`` (an
  int8, exact) in a pass of their own and the compensation takes ``128 * sum(w)`` back:
  sum (q - 128) w - sum (Z - 128) w = sum (q - Z) w.
"""

from __future__ import annotations

from qfa_deploy.deploy.registry import VectorUnit
from qfa_deploy.deploy.targets.arm.bitserial import lower_bitserial, schedule_bitserial_pointwise
from qfa_deploy.deploy.targets.arm.pairwise import lower_pairwise, schedule_pairwise_pointwise
from qfa_deploy.deploy.targets.cpu.integer import IntegerPlan, integer_rewrite

__all__ = ["DOTPROD", "NEON", "NEON_INT8", "register_intrinsics", "rewrite", "schedule"]

NEON = VectorUnit(bits=128, registers=32)
_SDOT_LANES = 4  # int32 lanes of one sdot (a q register)
_SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"


def _sdot_name(lanes: int, codes: str) -> str:
    """The ``sdot`` intrinsic for codes of dtype ``codes``: int8 (shifted), or uint8 proven below 128 by the
    lowering (``IntegerPlan.offset_for``), which ``sdot`` reads as the same int8 values."""
    return f"qfa_sdot_{'u7_' if codes == 'uint8' else ''}{lanes}x4"


def _lane_sdot_name(lanes: int, codes: str) -> str:
    """Two words of a pixel's codes in one load, ``sdot`` by lane (``register_lane_dot_intrinsic``)."""
    return f"qfa_sdot_lane_{'u7_' if codes == 'uint8' else ''}{lanes}x8"


# Depthwise sums in int16 where proven to fit, on int8 planes where every |q - Z| fits one (8 channels a
# tap; ``smlal`` multiplies 8 int8 pairs into the int16 sums at the multiply pipe's full rate, where a Q-form
# int16 ``mla`` takes the A72's one pipe for two cycles). Simulated on CIFAR-10 largest: A72 15.17 -> 13.27 M
# cycles (int16 planes and ``mla``: +1.3%), A76 15.11 -> 12.02 M
_INT16_LANES = (NEON.lanes(16),)


def _lower_pointwise_a72(builder, codes, weight, zero_point, code_bits):
    """Bit-serial popcounts where the bits make them cheaper, else the pairwise widening multiplies."""
    call = lower_bitserial(builder, codes, weight, zero_point, code_bits)
    return call if call is not None else lower_pairwise(builder, codes, weight, zero_point)


def _schedule_pointwise_a72(sch, blocks) -> bool:
    return schedule_bitserial_pointwise(sch, blocks) or schedule_pairwise_pointwise(sch, blocks)


NEON_INT8 = IntegerPlan(name="tiled-neon", unit=NEON, pointwise_lanes=(8, 4), depthwise_lanes=(4,), group=1,
                        depthwise_int16_lanes=_INT16_LANES, depthwise_int8_planes=True,
                        pointwise_lowering=_lower_pointwise_a72, pointwise_schedule=_schedule_pointwise_a72)
DOTPROD = IntegerPlan(
    name="tiled-dotprod", unit=NEON, pointwise_lanes=(8, 4), depthwise_lanes=(4,), group=4, code_offset=128,
    dot=_sdot_name, dot_lanes=_SDOT_LANES, lane_dot=_lane_sdot_name, depthwise_int16_lanes=_INT16_LANES,
    depthwise_int8_planes=True,
)


def register_intrinsics() -> None:
    """Register the ``sdot`` tensor intrinsics (int8 and small uint8 codes) in this process."""
    from qfa_deploy.deploy.targets.cpu.dot_intrinsic import register_dot_intrinsic, register_lane_dot_intrinsic

    for codes in ("int8", "uint8"):
        register_dot_intrinsic(_sdot_name(_SDOT_LANES, codes), _SDOT, _SDOT_LANES, codes)
        for lanes in (16, 8, 4):  # every tile a lowering may have packed for
            register_lane_dot_intrinsic(_lane_sdot_name(lanes, codes), _SDOT, lanes, codes)


def rewrite(mod, plan: IntegerPlan):
    """Before legalization: ``integer_rewrite`` (integer convs on the codes, the epilogue's divisions and
    clip bounds without loads or divisions)."""
    return integer_rewrite(mod, plan, NEON.lanes())


def schedule(mod, plan: IntegerPlan):
    """After fusion: the integer convs tiled (``sdot``-tensorized for ``DOTPROD``), the rest as ``tiled-cpu``."""
    from qfa_deploy.deploy.targets.cpu.integer_schedule import integer_schedule

    if plan.dot is not None:
        register_intrinsics()
    return integer_schedule(mod, plan, NEON)
