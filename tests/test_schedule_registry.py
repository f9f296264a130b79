"""The schedule registry: what "auto" resolves to per target features, one-line refusals, profiles that
name their schedule, the ``devices`` listing, and the exact shift-and-compensate of the sdot path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from deploy_helpers import device_file

from qfa_deploy.cli import cli
from qfa_deploy.deploy.compile import SCHEDULES, resolve_schedule
from qfa_deploy.deploy.registry import TARGET_PACKAGES, VectorUnit, resolve
from qfa_deploy.deploy.targets.arm.neon import DOTPROD, NEON, NEON_INT8
from qfa_deploy.deploy.targets.cpu.integer import pack_weight
from qfa_deploy.deploy.targets.cuda import SCHEDULES as SCHEDULES_OF_CUDA
from qfa_deploy.deploy.targets.x86.vnni import AVX2, AVX512
from qfa_deploy.errors import QfaError

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}


@pytest.mark.parametrize(("target", "expected"), [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}, "tiled-vnni"),  # AVX512-VNNI
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, "tiled-cpu"),  # AVX2 only
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, "tiled-cpu"),  # AVX-512, no VNNI
    ({**AARCH64, "mcpu": "cortex-a72", "mattr": ["+neon"]}, "tiled-neon"),
    ({**AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}, "tiled-dotprod"),
    ({**AARCH64, "mcpu": "cortex-a76"}, "tiled-dotprod"),  # the CPU implies the dot product
    ({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}}, "dlight"),
])
def test_auto_resolves_from_the_target_features(tmp_path, target, expected):
    device = device_file(tmp_path, "x86", name="probe", target=target)
    assert resolve_schedule("auto", str(device)) == expected


def test_the_shipped_profiles_resolve_to_their_schedules():
    assert resolve_schedule("auto", "rasp4b") == "tiled-neon"
    assert resolve_schedule("auto", "rasp4b-emulated") == "tiled-neon"
    assert resolve_schedule("auto", "rasp5") == "tiled-dotprod"
    assert resolve_schedule("auto", "rasp5-emulated") == "tiled-dotprod"
    assert resolve_schedule("auto", "cuda") == "dlight"
    assert resolve("tiled-neon", "rasp5").label == "tiled-neon"  # a v8.2 core runs the v8.0 schedule too


def test_a_profile_may_name_its_schedule(tmp_path):
    named = device_file(tmp_path, "rasp5", name="pi5-float", schedule="tiled-cpu")
    assert resolve_schedule("auto", str(named)) == "tiled-cpu"
    assert resolve_schedule("tiled-dotprod", str(named)) == "tiled-dotprod"  # an explicit name wins
    unknown = device_file(tmp_path, "rasp5", name="pi5-typo", schedule="tiled-fast")
    with pytest.raises(QfaError, match="device pi5-typo names schedule 'tiled-fast'"):
        resolve_schedule("auto", str(unknown))


@pytest.mark.parametrize(("schedule", "device", "reason"), [
    ("tiled-vnni", "rasp4b", "is not one for aarch64 targets"),
    ("tiled-neon", "x86", "is not one for x86_64 targets"),
    ("tiled-dotprod", "rasp4b", "needs a CPU with dotprod"),
    ("tiled-cpu", "cuda", "is for CPU targets"),
    ("dlight", "x86", "is not one for x86_64 targets"),
    ("fastest", "x86", "schedule must be one of"),
])
def test_refusals_are_one_short_line(schedule, device, reason):
    with pytest.raises(QfaError) as info:
        resolve_schedule(schedule, device)
    message = str(info.value)
    assert reason in message and "\n" not in message and "{" not in message and len(message) < 200, message


def test_haswell_refuses_vnni_in_one_line(tmp_path):
    device = device_file(tmp_path, "x86", name="x86-haswell", target={"kind": "llvm", "mcpu": "haswell"})
    with pytest.raises(QfaError, match=r"^schedule tiled-vnni needs a CPU with avx512vnni; device x86-haswell's "
                                       r"target \(llvm haswell\) has none: use --schedule auto$"):
        resolve_schedule("tiled-vnni", str(device))


def test_every_target_package_lists_its_schedules_best_first():
    assert SCHEDULES[0] == "auto" and SCHEDULES[-1] == "none"
    assert {"tiled-vnni", "tiled-cpu", "generic", "tiled-neon", "tiled-dotprod"} <= set(SCHEDULES)
    assert set(TARGET_PACKAGES) == {"x86_64", "aarch64", "cuda"}
    assert "dlight" in SCHEDULES


def test_cuda_targets_get_tvms_gpu_schedule_through_their_package():
    """The cuda package lists what a CUDA build gets (TVM's CUDA pipeline applies DLight inside tvm.compile:
    no apply, no rewrite), and "none" still resolves to nothing on it."""
    chosen = resolve("auto", "cuda-sm80")
    assert chosen is SCHEDULES_OF_CUDA[0]
    assert (chosen.name, chosen.label, chosen.arch, chosen.apply, chosen.rewrite) == (
        "dlight", "dlight-gpu", "cuda", None, None)
    assert resolve("dlight", "cuda") is chosen and resolve("none", "cuda") is None


def test_vector_units_come_from_the_target():
    assert (AVX2.lanes(), AVX2.accumulators) == (8, 12)  # the tiled-cpu tiles measured on x86
    assert (AVX512.lanes(), AVX512.lanes(8)) == (16, 64)
    assert (NEON.lanes(), NEON.accumulators) == (4, 28)
    assert NEON.registers_for(8) == 2 and AVX512.registers_for(8) == 1
    assert NEON_INT8.tile_columns(8) == 14 and DOTPROD.tile_columns(16) == 7  # register file / registers per pixel
    assert NEON_INT8.depthwise_block(72) == 4 and NEON_INT8.depthwise_block(30) is None
    with pytest.raises(ValueError, match="unsupported vector unit"):
        VectorUnit(bits=96, registers=16)


def test_shifted_codes_and_compensation_are_exact():
    """sdot multiplies signed bytes: codes q in [0, 255] go in as q - 128 (an int8), and the compensation
    sum_c (Z - 128) w takes the shift back, so the int32 sum is the conv's sum (q - Z) w exactly."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (24, 40)).astype(np.int8)
    zero_point = rng.integers(0, 256, 40)
    codes = rng.integers(0, 256, (40, 9))
    packed, comp = pack_weight(w, zero_point, 16, group=4, code_offset=128)
    assert packed.shape == (2, 10, 16, 4)
    shifted = (codes - 128).astype(np.int8)  # what the pack stage writes: exact
    np.testing.assert_array_equal(shifted.astype(np.int64) + 128, codes)
    acc = w.astype(np.int64) @ shifted.astype(np.int64) - comp[:, None]
    np.testing.assert_array_equal(acc, w.astype(np.int64) @ (codes - zero_point[:, None]))
    products = np.abs(np.arange(256)[:, None] * np.arange(-128, 128)[None, :])
    assert products.max() == 32640 < 2**15  # why tiled-neon's uint8 x int8 products are exact in int16


def test_devices_lists_each_profiles_schedule():
    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if not line.startswith("aliases")}
    assert rows["rasp4b"] == "tiled-neon" and rows["rasp5"] == "tiled-dotprod" and rows["cuda-sm80"] == "dlight"
    assert rows["x86"] in ("tiled-vnni", "tiled-cpu")
    listed = json.loads(CliRunner().invoke(cli, ["devices", "--json"]).output)
    by_name = {d["name"]: d for d in listed["devices"]}
    assert by_name["rasp5-emulated"]["resolved_schedule"] == "tiled-dotprod"
    assert by_name["rasp5"]["schedule"] == "auto"
