"""x86-64 schedules, best first: ``tiled-vnni`` (AVX512-VNNI integer dot products), ``tiled-cpu``
(register-tiled float convs in AVX2's 8 x 16 registers), ``generic``."""

from __future__ import annotations

from qfa_deploy.deploy.registry import TargetSchedule
from qfa_deploy.deploy.targets.cpu.tiled import float_schedules
from qfa_deploy.deploy.targets.x86 import vnni
from qfa_deploy.deploy.targets.x86.vnni import AVX2

__all__ = ["SCHEDULES"]

ARCH = "x86_64"
SCHEDULES = (
    TargetSchedule("tiled-vnni", "tiled-vnni", ARCH, vnni.schedule, vnni.rewrite, needs=("avx512vnni",),
                   summary="1x1 convs as uint8 x int8 vpdpbusd dot products, depthwise channel-blocked"),
    *float_schedules(ARCH, AVX2),
)
