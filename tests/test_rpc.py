"""TVM RPC for real, on 127.0.0.1: a tracker and x86 RPC servers as separate processes.

Profiles an x86 artifact through the tracker key and through a direct server, then stops every
process and checks that no PID of their trees (the ``popen_worker`` children included) is left.
Unreachable trackers and keys with no board fail with a one-line error within a bounded time.
Fast: ~30 s here (the servers start in ~2 s: they import TVM's runtime only, without torch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import (
    FAST_PROTOCOL,
    alive_pids,
    artifact_dir,
    clip_qdq_model,
    device_file,
    ort_qdq_model,
    run_cli,
    write_meta,
)

from qfa_deploy.deploy import compile_artifact, load_device, profile_artifact
from qfa_deploy.deploy.procs import free_port, start_rpc_server, start_tracker, tracker_keys
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.errors import QfaError

KEY = "x86-rpc-test"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def x86_artifact(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("rpc-artifact")
    device = device_file(folder, "x86", name="x86-rpc", protocol=FAST_PROTOCOL)
    onnx_path = ort_qdq_model(folder / "model.onnx")
    write_meta(folder, compile_artifact(onnx_path, str(device), folder))
    return folder, device


def test_profile_through_tracker_then_stop_everything(x86_artifact):
    folder, device = x86_artifact
    tracker = start_tracker()
    try:
        server = start_rpc_server(("127.0.0.1", tracker.port), KEY)
        try:
            assert tracker_keys("127.0.0.1", tracker.port) == {KEY: 1}
            result = profile_artifact(folder, str(device), tracker=f"127.0.0.1:{tracker.port}", key=KEY)
            assert result["runner"] == {"kind": "rpc-tracker", "host": "127.0.0.1", "port": tracker.port, "key": KEY}
            assert result["parity"]["max_abs_diff"] <= TOLERANCE and result["parity"]["argmax_agree"]
            assert result["timing"] == "latency" and result["latency_ms"]["median"] > 0
            # The server runs its sessions in a popen_worker child: a tree, not one process.
            server_pids = server.all_pids()
            assert len(server_pids) >= 2 and len(tracker.all_pids()) >= 2
        finally:
            server.stop()
        assert alive_pids(server.all_pids()) == []
    finally:
        tracker.stop()
    assert alive_pids(tracker.all_pids()) == []


def test_direct_server(x86_artifact, tmp_path):
    folder, _ = x86_artifact
    with start_rpc_server(None) as server:
        direct = device_file(tmp_path, "x86", name="x86-direct", protocol=FAST_PROTOCOL,
                             runner={"kind": "rpc-direct", "host": "127.0.0.1", "port": server.port})
        result = profile_artifact(folder, str(direct))
        assert result["runner"]["kind"] == "rpc-direct"
        assert result["parity"]["max_abs_diff"] <= TOLERANCE
        with pytest.raises(QfaError, match="runs it over RPC, where the VM cannot call back"):
            profile_artifact(folder, str(direct), layers=True)  # --layers: this machine or simulated only
        pids = server.all_pids()
    assert alive_pids(pids) == []


def test_unreachable_tracker_is_a_quick_one_line_error(x86_artifact):
    folder, device = x86_artifact
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(QfaError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        profile_artifact(folder, str(device), tracker=f"127.0.0.1:{port}", key=KEY, timeout=5)
    assert time.monotonic() - start < 10
    done = run_cli("profile", str(folder), "--device", "rasp4b", "--tracker", f"127.0.0.1:{port}", "--timeout", "5")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot reach the RPC tracker" in lines[0], done.stderr


def test_no_board_under_key_and_busy_board_time_out(x86_artifact):
    folder, device = x86_artifact
    with start_tracker() as tracker:
        address = f"127.0.0.1:{tracker.port}"
        with pytest.raises(QfaError, match="no device is registered under key 'rasp4b' .*keys there: none"):
            profile_artifact(folder, "rasp4b", tracker=address, timeout=5)
        with start_rpc_server(("127.0.0.1", tracker.port), KEY):
            dev = load_device(str(device)).with_runner(kind="rpc-tracker", host="127.0.0.1", port=tracker.port, key=KEY)
            with open_session(dev, timeout=10) as held:  # the only board under KEY is now busy
                assert held.is_remote
                start = time.monotonic()
                with pytest.raises(QfaError, match="became free within 3 s"):
                    open_session(dev, timeout=3)
                assert time.monotonic() - start < 15


def test_one_session_runs_each_library_it_loads(x86_artifact, tmp_path):
    """A session loading one library after another (what ``lut build`` does per part) runs each of
    them: every upload gets a remote name of its own. Re-uploading over the name of a loaded library
    handed back the stale handle (the emulated Pi segfaulted in dlsym)."""
    folder, device = x86_artifact
    other = artifact_dir(tmp_path / "other", clip_qdq_model(tmp_path / "clip.onnx"))
    write_meta(other, compile_artifact(other / "model.onnx", str(device), other))
    rng = np.random.default_rng(0)
    cases = []
    for art in (folder, other, folder):
        meta = json.loads((art / "meta.json").read_text())
        x = rng.standard_normal([int(d) for d in meta["inputs"][0]["shape"]]).astype(np.float32)
        local = open_session(load_device(str(device)))
        cases.append((art / meta["library"], x, local.run(local.load(art / meta["library"]), [x])))
    with start_tracker() as tracker, start_rpc_server(("127.0.0.1", tracker.port), KEY):
        dev = load_device(str(device)).with_runner(kind="rpc-tracker", host="127.0.0.1", port=tracker.port, key=KEY)
        with open_session(dev, timeout=30) as session:
            for lib, x, expected in cases:
                got = session.run(session.load(lib), [x])
                assert [g.shape for g in got] == [e.shape for e in expected]
                np.testing.assert_array_equal(got[0], expected[0])
