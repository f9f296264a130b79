"""aarch64 schedules, best first: ``tiled-dotprod`` (Pi 5: ``sdot`` dot products), ``tiled-neon`` (Pi 4:
NEON 8-bit widening multiplies and pairwise adds), ``tiled-cpu`` (float convs in 4-lane NEON registers),
``generic``."""

from __future__ import annotations

from functools import partial

from qfa_deploy.deploy.registry import TargetSchedule
from qfa_deploy.deploy.targets.arm import neon
from qfa_deploy.deploy.targets.arm.bitserial import runs_bitserial
from qfa_deploy.deploy.targets.arm.neon import DOTPROD, NEON, NEON_INT8
from qfa_deploy.deploy.targets.cpu.tiled import float_schedules

__all__ = ["SCHEDULES"]

ARCH = "aarch64"
SCHEDULES = (
    TargetSchedule("tiled-dotprod", "tiled-dotprod", ARCH, partial(neon.schedule, plan=DOTPROD),
                   partial(neon.rewrite, plan=DOTPROD), needs=("dotprod",),
                   summary="1x1 convs as sdot int8 dot products (codes shifted by 128), depthwise channel-blocked"),
    TargetSchedule("tiled-neon", "tiled-neon", ARCH, partial(neon.schedule, plan=NEON_INT8),
                   partial(neon.rewrite, plan=NEON_INT8), needs=("neon",),
                   summary="1x1 convs as smull + sadalp on codes shifted by 128, or on bit planes where the "
                           "bits are few (W2A2 from 128 input channels), depthwise channel-blocked",
                   bit_kernel=runs_bitserial),
    *float_schedules(ARCH, NEON),
)
