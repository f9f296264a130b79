"""Measurements know when other work shared their CPU (``deploy.cpu_share``): a real busy process
pinned beside them, a real TVM timing, and ``lut``'s measurement timing again and warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deploy_helpers import device_file, ort_qdq_model

from qfa_deploy.deploy.cpu_share import FOREIGN_CPU_LIMIT, CpuShare

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_setaffinity"),
                                reason="needs Linux /proc and CPU affinity")

HOG = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def _hog(cpu: int) -> subprocess.Popen:
    """A process spinning on ``cpu`` (stopped by the caller)."""
    return subprocess.Popen([sys.executable, "-c", HOG, str(cpu)])


def test_a_process_spinning_on_the_same_cpu_is_seen():
    """A second of busy work alone, then beside a spinning process on the same CPU: the share of that
    CPU the other process took is read from /proc (in a child pinned to the CPU, to leave the test
    process's affinity alone)."""
    cpu = min(os.sched_getaffinity(0))
    script = textwrap.dedent(f"""
        import os, time
        from qfa_deploy.deploy.cpu_share import CpuShare
        os.sched_setaffinity(0, {{{cpu}}})
        def busy():
            with CpuShare({{{cpu}}}) as share:
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    pass
            return share.foreign
        print(busy())
        input()  # the hog starts now
        print(busy())
    """)
    probe = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    alone = float(probe.stdout.readline())
    hog = _hog(cpu)
    try:
        probe.stdin.write("\n")
        probe.stdin.flush()
        shared = float(probe.stdout.readline())
    finally:
        hog.kill()
        hog.wait()
        probe.wait(timeout=30)
    assert 0.0 <= alone <= 1.0 and 0.3 < shared <= 1.0, (alone, shared)
    assert shared > alone + 0.1, (alone, shared)  # the CPU may have had other work already


def test_a_cpu_the_block_never_ran_on_counts_as_other_work():
    """The CPUs are the ones named, whoever runs there: a hog's CPU is nearly all foreign to a block
    that sleeps."""
    cpu = min(os.sched_getaffinity(0))
    hog = _hog(cpu)
    try:
        with CpuShare({cpu}) as share:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.6)"], check=True)
    finally:
        hog.kill()
        hog.wait()
    assert share.foreign is not None and share.foreign > 0.5, share.foreign


def test_lut_measurement_times_again_and_warns_while_shared(tmp_path, caplog):
    """``measure_onnx`` on a real compiled model: beside a spinning process on the session's CPU it
    times up to ATTEMPTS times, records the share and warns; alone it records the share too."""
    import onnx

    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.runner import open_session
    from qfa_deploy.lut.measure import measure_onnx

    protocol = {"warmup": 1, "number": 1, "repeat": 10, "min_repeat_ms": 20, "statistic": "min"}
    dev = load_device(str(device_file(tmp_path, "x86-1t", name="x86-1t-share-test", protocol=protocol)))
    model = onnx.load(str(ort_qdq_model(tmp_path / "model.onnx")))
    with open_session(dev) as session:
        quiet = measure_onnx(model, dev, session, "auto")
        cpu = int(session._pinned_cpus[0])  # where the session's timing runs
        hog = _hog(cpu)
        try:
            with caplog.at_level(logging.WARNING, logger="qfa_deploy.lut.measure"):
                shared = measure_onnx(model, dev, session, "auto")
        finally:
            hog.kill()
            hog.wait()
    assert "foreign_cpu" in quiet and 0.0 <= quiet["foreign_cpu"] <= 1.0
    assert shared["foreign_cpu"] > FOREIGN_CPU_LIMIT and shared["foreign_cpu"] > quiet["foreign_cpu"], (quiet, shared)
    assert any("other work took" in r.getMessage() for r in caplog.records), caplog.text
