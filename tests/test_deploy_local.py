"""TVM compile for this x86 CPU, run in this process, compare with onnxruntime; device profiles.

Fast (about a minute): every model here compiles in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from deploy_helpers import (
    FAST_PROTOCOL,
    artifact_dir,
    clip_qdq_model,
    device_file,
    exported_subnet_model,
    ort_qdq_model,
    run_cli,
    write_meta,
)

from qfa_deploy.cli import cli
from qfa_deploy.deploy import compile_artifact, list_devices, load_device, profile_artifact
from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, resolve_schedule
from qfa_deploy.deploy.registry import resolve
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.deploy.targets.x86.vnni import AVX2
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError

TOLERANCE = 1e-5  # bit-exact on onnxruntime-quantized models; float rounding on hand-built ones


@pytest.fixture(scope="module")
def fast_x86(tmp_path_factory) -> Path:
    """The x86 profile with a short measurement protocol."""
    return device_file(tmp_path_factory.mktemp("devices"), "x86", name="x86-fast", protocol=FAST_PROTOCOL)


@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory, fast_x86) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ort-artifact")
    onnx_path = ort_qdq_model(folder / "model.onnx")
    meta = compile_artifact(onnx_path, str(fast_x86), folder)
    write_meta(folder, meta)
    return folder, meta


def test_compile_writes_library_and_meta(ort_artifact, fast_x86):
    folder, meta = ort_artifact
    lib = folder / "model.so"
    assert lib.is_file() and lib.read_bytes()[:4] == b"\x7fELF"
    assert meta["library"] == "model.so"
    assert meta["library_sha256"] == file_sha256(lib)
    assert meta["target"]["kind"] == "llvm" and meta["target"]["mcpu"] not in ("", "host")
    assert meta["tvm_version"].startswith("0.27")
    applied = resolve(DEFAULT_SCHEDULE, str(fast_x86)).label
    assert meta["tuning_database"] is None and meta["schedule"] == applied
    assert meta["inputs"] == [{"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    json.dumps(meta)  # JSON-ready
    assert not list(folder.glob(".model.*"))  # no temporary left behind


def test_auto_schedule_follows_the_cpu(fast_x86):
    """"auto" is tiled-vnni where the CPU has AVX512-VNNI (read here from /proc/cpuinfo, not from
    TVM), tiled-neon on the Pi 4 target, dlight on CUDA; other names pass through, unknown ones are refused."""
    has_vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text().split()
    assert resolve_schedule("auto", str(fast_x86)) == ("tiled-vnni" if has_vnni else "tiled-cpu")
    assert resolve_schedule("auto", "arm64") == "tiled-neon"
    assert resolve_schedule("auto", "cuda") == "dlight"
    assert resolve_schedule("generic", "arm64") == "generic"
    with pytest.raises(QfaError, match="schedule must be one of auto, "):
        resolve_schedule("fastest", str(fast_x86))


RUN_ONCE = """
import sys
import numpy as np
from qfa_deploy.deploy import load_device
from qfa_deploy.deploy.runner import open_session
with open_session(load_device(sys.argv[1])) as session:
    session.run(session.load(sys.argv[2]), [np.zeros((1, 3, 16, 16), np.float32)])
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_two_thread_session_exits_beside_a_busy_core(ort_artifact, fast_x86):
    """With TVM's pool left to the interpreter's exit, a process whose worker thread shared its core
    with another busy process ran in a second and exited minutes later; a closed session has none."""
    folder, _ = ort_artifact
    second_cpu = sorted(os.sched_getaffinity(0))[1]
    spin = f"import os\nos.sched_setaffinity(0, {{{second_cpu}}})\nwhile True: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        done = subprocess.run([sys.executable, "-c", RUN_ONCE, str(fast_x86), str(folder / "model.so")],
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_closed_session_gives_the_process_its_cpus_back(ort_artifact, fast_x86):
    """Shrinking TVM's pool to one thread on close pinned the calling thread to the first CPU: every
    later process it started (and its own later work) ran on one core (seen: the two-thread test
    above failed after another test file's in-process session)."""
    folder, _ = ort_artifact
    before = os.sched_getaffinity(0)
    with open_session(load_device(str(fast_x86))) as session:
        session.run(session.load(folder / "model.so"), [np.zeros((1, 3, 16, 16), np.float32)])
    assert os.sched_getaffinity(0) == before


def test_profile_local_matches_onnxruntime(ort_artifact, fast_x86):
    folder, _ = ort_artifact
    result = profile_artifact(folder, str(fast_x86))
    parity = result["parity"]
    assert parity["max_abs_diff"] <= TOLERANCE, parity
    assert parity["argmax_agree"] and parity["reference"].endswith("ORT_DISABLE_ALL")
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p10"] <= lat["median"] <= lat["p90"] <= lat["max"]
    assert result["timing"] == "latency" and result["emulated"] is False
    assert result["protocol"]["repeat"] == FAST_PROTOCOL["repeat"] == result["protocol"]["repeats_measured"]
    assert result["protocol"]["warmup"] == FAST_PROTOCOL["warmup"] and result["protocol"]["threads"] == 2
    assert result["runner"] == {"kind": "local"}
    assert result["library_sha256"] == file_sha256(folder / "model.so")


@pytest.mark.parametrize("bits, schedule", [((4, 3, 2), "generic"), ((2, 2, 2), "generic"), ((4, 3, 2), "none"),
                                            ((4, 3, 2), "tiled-cpu"), ((2, 2, 2), "tiled-cpu")])
def test_clip_qdq_low_bit_matches_onnxruntime(tmp_path, fast_x86, bits, schedule):
    folder = artifact_dir(tmp_path / "art", clip_qdq_model(tmp_path / "clip.onnx", bits=bits))
    meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
    assert meta["schedule"] == {"generic": "generic-cpu", "tiled-cpu": "tiled-cpu", "none": "none"}[schedule]
    parity = profile_artifact(folder, str(fast_x86), seed=5)["parity"]
    assert parity["max_abs_diff"] <= TOLERANCE and parity["argmax_agree"], parity


def test_generic_schedule_is_bit_identical_to_naive_loops(tmp_path, fast_x86, cifar_supernet):
    """Inlining and parallel outer loops reorder no arithmetic: same bits as TVM's naive build."""
    from qfa_deploy.deploy.parity import random_inputs
    from qfa_deploy.deploy.runner import open_session

    onnx_path = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet, seed=7)
    outputs = {}
    for schedule in ("generic", "none"):
        folder = artifact_dir(tmp_path / schedule, onnx_path)
        meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
        with open_session(load_device(str(fast_x86))) as session:
            vm = session.load(folder / "model.so")
            outputs[schedule] = session.run(vm, random_inputs(meta["inputs"], seed=1))[0]
    np.testing.assert_array_equal(outputs["generic"], outputs["none"])


def test_tiled_schedule_is_bit_identical_on_small_net(tmp_path, fast_x86):
    """tiled-cpu on onnxruntime's QDQ conv net (3x3 conv, depthwise, pointwise, linear): naive bits."""
    from qfa_deploy.deploy.parity import random_inputs
    from qfa_deploy.deploy.runner import open_session

    onnx_path = ort_qdq_model(tmp_path / "model.onnx", resolution=16)
    outputs = {}
    for schedule in ("tiled-cpu", "none"):
        folder = artifact_dir(tmp_path / schedule, onnx_path)
        meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
        with open_session(load_device(str(fast_x86))) as session:
            outputs[schedule] = session.run(session.load(folder / "model.so"), random_inputs(meta["inputs"], seed=2))
    np.testing.assert_array_equal(outputs["tiled-cpu"][0], outputs["none"][0])


def test_tiled_convs_keep_a_parallel_loop(tmp_path):
    """Every conv function keeps a parallel outer loop (a refused ``parallel`` once left them all serial)."""
    import onnx
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import from_onnx

    from qfa_deploy.deploy.targets.cpu.tiled import tiled_cpu_schedule

    model = onnx.load(ort_qdq_model(tmp_path / "model.onnx", resolution=16))
    mod = from_onnx(model, shape_dict={"input": [1, 3, 16, 16]}, keep_params_in_input=False)
    with load_device("x86").tvm_target():
        mod = relax.get_pipeline("zero")(mod)
    mod = tiled_cpu_schedule(mod, AVX2)
    convs = {gv.name_hint: f.script() for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert convs and all("T.parallel" in text for text in convs.values()), sorted(convs)


def test_global_pooling_sums_channels_in_lanes_bit_identically():
    """The squeeze-excite pooling runs a vector of channels at a time, each lane summing its channel in
    the naive order: the same bits as the unscheduled build."""
    import tvm
    from tvm import relax, tirx
    from tvm.script import relax as R

    from qfa_deploy.deploy.schedule import generic_cpu_schedule

    @tvm.script.ir_module
    class Pool:
        @R.function
        def main(x: R.Tensor((1, 48, 7, 7), "float32")):
            return R.mean(x, axis=[2, 3], keepdims=True)

    target = load_device("x86").tvm_target()
    x = np.random.default_rng(0).standard_normal((1, 48, 7, 7)).astype(np.float32) * 1e3
    results = {}
    for name, schedule in (("lanes", partial(generic_cpu_schedule, unit=AVX2)), ("naive", None)):
        with target:
            mod = relax.get_pipeline("zero")(Pool)
        if schedule is not None:
            mod = schedule(mod)
            texts = [f.script() for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
            (pool,) = [text for text in texts if "_red" in text]
            assert "T.vectorized" in pool and "T.parallel" in pool, pool
        vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        results[name] = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    np.testing.assert_array_equal(results["lanes"], results["naive"])


def test_functions_a_database_scheduled_are_left_alone():
    """A PrimFunc carrying TVM's scheduled mark (as MetaSchedule's database leaves it) is not touched;
    the ones scheduled here get the mark (a misspelt mark once re-scheduled tuned functions and crashed)."""
    import tvm
    from tvm import relax, tirx
    from tvm.script import relax as R

    from qfa_deploy.deploy.schedule import SCHEDULED_ATTR, generic_cpu_schedule

    @tvm.script.ir_module
    class Two:
        @R.function
        def main(x: R.Tensor((1, 48, 7, 7), "float32")):
            with R.dataflow():
                pooled = R.mean(x, axis=[2, 3], keepdims=True)
                rectified = R.nn.relu(x)  # not fusable with the mean: a function of its own
                out = (pooled, rectified)
                R.output(out)
            return out

    with load_device("x86").tvm_target():
        mod = relax.get_pipeline("zero")(Two)
    names = sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))
    assert len(names) == 2, names
    tuned = next(name for name in names if "mean" in name)
    mod[tuned] = mod[tuned].with_attr("tirx.is_scheduled", True)  # TVM's own spelling (its database, dlight)
    before = mod[tuned]
    mod = generic_cpu_schedule(mod, AVX2)
    tvm.ir.assert_structural_equal(mod[tuned], before)
    assert all(bool(mod[name].attrs[SCHEDULED_ATTR]) for name in names)
    assert any("T.parallel" in mod[name].script() for name in names if name != tuned)


@pytest.mark.slow
def test_tiled_schedule_is_bit_identical(tmp_path, fast_x86, cifar_supernet):
    """Register tiling (tiled-cpu) reorders no output's sum over (ci, kh, kw): the same bits as TVM's
    naive build on an exported CIFAR subnet (pointwise, depthwise 3/5/7, stride 2, squeeze-excite, stem),
    hence the same distance to onnxruntime without graph optimisations (whose float sums in the
    unquantized classifier differ from TVM's in the last bits, ~2e-8, whatever the schedule)."""
    from qfa_deploy.deploy.parity import compare_outputs, onnxruntime_outputs, random_inputs
    from qfa_deploy.deploy.runner import open_session

    onnx_path = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet, seed=7)
    outputs = {}
    for schedule in ("tiled-cpu", "none"):
        folder = artifact_dir(tmp_path / schedule, onnx_path)
        meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder, schedule=schedule)
        assert meta["schedule"] == {"tiled-cpu": "tiled-cpu", "none": "none"}[schedule]
        with open_session(load_device(str(fast_x86))) as session:
            vm = session.load(folder / "model.so")
            outputs[schedule] = [session.run(vm, random_inputs(meta["inputs"], seed=s))[0] for s in range(3)]
    for s, (tiled, naive) in enumerate(zip(outputs["tiled-cpu"], outputs["none"], strict=True)):
        np.testing.assert_array_equal(tiled, naive)
        reference = onnxruntime_outputs(onnx_path, meta["inputs"], random_inputs(meta["inputs"], seed=s))
        parity = compare_outputs([tiled], reference)
        assert parity["max_abs_diff"] <= TOLERANCE and parity["argmax_agree"], parity


def test_exported_subnet_matches_onnxruntime(tmp_path, fast_x86, cifar_supernet):
    onnx_path = exported_subnet_model(tmp_path / "subnet.onnx", cifar_supernet)
    folder = artifact_dir(tmp_path / "art", onnx_path)
    meta = compile_artifact(folder / "model.onnx", str(fast_x86), folder)
    shape = meta["inputs"][0]["shape"]
    assert shape[:2] == [1, 3] and shape[2] == shape[3]
    write_meta(folder, {"format": "qfa-artifact", "target": "x86", "compile": meta})  # the exporter's layout
    result = profile_artifact(folder, str(fast_x86))
    assert result["parity"]["max_abs_diff"] <= TOLERANCE and result["parity"]["argmax_agree"], result["parity"]
    assert result["target"]["kind"] == "llvm"


def test_cli_compile_and_profile_json(tmp_path, fast_x86):
    onnx_path = ort_qdq_model(tmp_path / "in.onnx")
    out = tmp_path / "art"
    done = run_cli("compile", str(onnx_path), "--device", str(fast_x86), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {"model.so", "model.onnx", "meta.json"} <= {p.name for p in out.iterdir()}
    done = run_cli("profile", str(out), "--device", str(fast_x86), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["latency_ms"]) >= {"median", "p10", "p90"}
    assert report["parity"]["max_abs_diff"] <= TOLERANCE
    human = CliRunner().invoke(cli, ["profile", str(out), "--device", str(fast_x86)])  # in-process: no startup cost
    assert human.exit_code == 0, human.output
    assert "latency: median" in human.output and "bit-exact" in human.output


# --- device profiles ---------------------------------------------------------------------------


def test_shipped_profiles_load():
    names = list_devices()
    assert {"x86", "rasp4b", "rasp4b-emulated", "cuda-sm80"} <= set(names)
    pi, emu = load_device("rasp4b"), load_device("rasp4b-emulated")
    assert pi.target == emu.target == "raspberry-pi/4b-aarch64" and pi.cc == "aarch64-linux-gnu-gcc"
    assert (pi.runner.kind, pi.runner.key, pi.threads, pi.emulated) == ("rpc-tracker", "rasp4b", 4, False)
    assert (emu.runner.host, emu.runner.port, emu.runner.key, emu.emulated) == ("127.0.0.1", 9190, "rasp4b-emu", True)
    cuda = load_device("cuda-sm80").target
    assert (cuda["kind"], cuda["arch"], cuda["host"]) == ("cuda", "sm_80", {"kind": "llvm"})
    assert load_device("arm64").name == "rasp4b" and load_device("cuda").name == "cuda-sm80"
    x86 = load_device("x86")
    assert x86.target["mcpu"] != "host" and x86.runner.kind == "local"
    assert pi.tvm_target().attrs["mtriple"] == "aarch64-linux-gnu"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "d"}', "missing field 'target'"),
        ('{"name": "d", "target": "llvm", "color": 1}', "unknown field(s) color"),
        ('{"name": "d", "target": "llvm", "runner": {"kind": "ssh"}}', "runner.kind"),
        ('{"name": "d", "target": "llvm", "runner": {"kind": "rpc-tracker", "host": "h", "port": 1}}', "runner.key"),
        ('{"name": "d", "target": "llvm", "protocol": {"repeat": 0}}', "protocol.repeat"),
        ('{"name": "d", "target": "llvm", "protocol": {"repeats": 3}}', "repeats"),
        ('{"name": "d", "target": "llvm", "protocol": {"statistic": "mean"}}', "protocol.statistic"),
        ('{"name": "d", "target": "llvm", "threads": -1}', "threads"),
        ('{"name": "d", "target": "llvm", "threads": 100000000000000000}', "threads must be an integer in [0, 4096]"),
        ('{"name": "d", "target": "llvm", "protocol": {"repeat": 100000000000000000}}', "protocol.repeat must be an "
         "integer in [1, 10000]"),
        ('{"name": "d", "target": "llvm", "version": 9}', "version 9"),
    ],
)
def test_malformed_device_file(tmp_path, content, message):
    path = tmp_path / "dev.json"
    path.write_text(content)
    with pytest.raises(QfaError) as info:
        load_device(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_unknown_device():
    with pytest.raises(QfaError, match="unknown device 'pi5'.*x86"):
        load_device("pi5")


@pytest.mark.parametrize("device, expect", [("no-such-board", "unknown device 'no-such-board'"),
                                            ("BAD", "malformed device file")])
def test_cli_device_errors_exit_2_one_line(tmp_path, ort_artifact, device, expect):
    folder, _ = ort_artifact
    if device == "BAD":
        device = str(tmp_path / "bad.json")
        Path(device).write_text('{"name": "bad", "target": {"kind": "llvm"}, "runner": {"kind": "rpc-direct"}}')
    done = run_cli("profile", str(folder), "--device", device)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], done.stderr


def test_profile_errors(tmp_path, ort_artifact, fast_x86):
    folder, meta = ort_artifact
    with pytest.raises(QfaError, match="no model.so"):
        profile_artifact(tmp_path, str(fast_x86))
    stale = artifact_dir(tmp_path / "stale", folder / "model.onnx")
    (stale / "model.so").write_bytes((folder / "model.so").read_bytes())
    write_meta(stale, {**meta, "library_sha256": "0" * 64})
    with pytest.raises(QfaError, match="sha256 differs"):
        profile_artifact(stale, str(fast_x86))
    arm = artifact_dir(tmp_path / "arm", folder / "model.onnx")
    (arm / "model.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (183).to_bytes(2, "little") + b"\0" * 100)
    with pytest.raises(QfaError, match="built for aarch64"):
        profile_artifact(arm, str(fast_x86))
    with pytest.raises(QfaError, match="--tracker must be HOST:PORT"):
        profile_artifact(folder, "rasp4b", tracker="nowhere")


def test_compile_errors(tmp_path, fast_x86):
    with pytest.raises(QfaError, match="does not exist"):
        compile_artifact(tmp_path / "missing.onnx", str(fast_x86), tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(QfaError, match="not a readable ONNX model|TVM cannot import"):
        compile_artifact(junk, str(fast_x86), tmp_path)
