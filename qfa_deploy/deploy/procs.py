"""Start and stop TVM RPC trackers and servers on 127.0.0.1, and wait until they are ready.

Stopping ends the whole process tree by PID (psutil): TVM's tracker and server each run their
work in a ``popen_worker`` child that outlives its parent when only the parent is killed.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "free_port",
    "rpc_environment",
    "start_rpc_server",
    "start_tracker",
    "tracker_answers",
    "tracker_keys",
    "wait_for_key",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_RPC_TRACKER_MAGIC = 0x2F271
_RPC_SITE = Path(__file__).with_name("_rpc_site")  # its sitecustomize hides torch  # tvm.rpc.base.RPC_TRACKER_MAGIC


class ManagedProcess:
    """A child process (and its descendants) that we started; a context manager that stops it."""

    def __init__(self, name: str, args: Sequence[str], *, env: dict | None = None, cwd: str | None = None,
                 port: int | None = None):
        self.name = name
        self.port = port  # the TCP port it serves on, when it serves one
        self.args = [str(a) for a in args]
        self.log_path = Path(tempfile.mkstemp(prefix=f"qfa-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        # A list of arguments, never a shell; a new session so a terminal's Ctrl-C reaches us first.
        self.popen = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.popen.pid
        self._seen: set[int] = {self.pid}
        log.info("started %s (pid %d): %s", name, self.pid, " ".join(self.args))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def descendants(self) -> list[int]:
        """PIDs of the live process tree (also remembered for :meth:`stop`)."""
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        pids = [c.pid for c in children]
        self._seen.update(pids)
        return pids

    def all_pids(self) -> list[int]:
        """This process and every descendant seen so far (dead or alive)."""
        self.descendants()
        return sorted(self._seen)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, timeout: float = 10.0, keep_log: bool = False) -> None:
        """Terminate the tree (children first seen, then the parent); kill what outlives ``timeout``.

        The process's log file is removed unless ``keep_log`` (startup failures quote its tail).
        """
        import psutil

        self.descendants()
        procs = []
        for pid in sorted(self._seen):
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        if self.popen.poll() is None:
            self.popen.wait(timeout)
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        log.info("stopped %s (pids %s)", self.name, sorted(self._seen))

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_tracker(port: int | None = None, *, timeout: float = 60.0) -> ManagedProcess:
    """``python -m tvm.exec.rpc_tracker`` on 127.0.0.1:``port`` (a free one if None), once it answers."""
    port = port or free_port()
    args = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", LOOPBACK, "--port", str(port),
            "--port-end", str(port + 1), "--silent"]
    proc = ManagedProcess(f"tracker-{port}", args, env=rpc_environment(), port=port)
    try:
        _wait(lambda: tracker_answers(LOOPBACK, port), proc, timeout, f"RPC tracker on {LOOPBACK}:{port}")
    except BaseException:
        proc.stop()
        raise
    return proc


def start_rpc_server(tracker: tuple[str, int] | None, key: str = "", *, port: int | None = None,
                     timeout: float = 60.0) -> ManagedProcess:
    """``python -m tvm.exec.rpc_server`` on 127.0.0.1, ready when the tracker lists ``key``
    (or, with ``tracker=None``, when it accepts connections: a server for direct sessions)."""
    port = port or free_port()
    args = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", LOOPBACK, "--port", str(port),
            "--port-end", str(port + 1), "--silent"]
    if tracker is not None:
        if not key:
            raise ValueError("a server registered with a tracker needs a key")
        args += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key]
    proc = ManagedProcess(f"rpc-server-{key or 'direct'}-{port}", args, env=rpc_environment(), port=port)
    try:
        if tracker is not None:
            wait_for_key(tracker, key, timeout=timeout, process=proc)
        else:
            _wait(lambda: _accepts(LOOPBACK, port), proc, timeout, f"RPC server on {LOOPBACK}:{port}")
    except BaseException:
        proc.stop()
        raise
    return proc


def rpc_environment() -> dict:
    """Environment of the tracker/server processes: TVM's runtime library only, and no torch.

    Both cut a start from ~20 s to ~2 s here; neither process compiles anything. The runtime-only
    library serves RPC sessions, loads modules and runs the Relax VM.
    """
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_RPC_SITE), env.get("PYTHONPATH")) if p)
    return env


def tracker_keys(host: str, port: int, timeout: float = 5.0) -> dict[str, int]:
    """Keys registered at the tracker and how many servers each has (QfaError if unreachable)."""
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise QfaError(f"cannot reach the RPC tracker at {host}:{port}: {exc.strerror or exc}") from None
    with sock:
        try:
            _tracker_handshake(sock)
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            reply = base.recvjson(sock)
        except (OSError, struct.error, ValueError) as exc:
            raise QfaError(f"{host}:{port} does not answer as a TVM RPC tracker ({exc})") from None
    counts: dict[str, int] = {}
    for server in reply[1].get("server_info", []):
        key = str(server.get("key", "")).split(":", 1)[-1]
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_for_key(tracker: tuple[str, int], key: str, *, timeout: float = 60.0,
                 process: ManagedProcess | None = None, servers: int = 1) -> None:
    """Block until the tracker lists at least ``servers`` servers registered as ``key``."""

    def ready() -> bool:
        try:
            return tracker_keys(*tracker, timeout=2.0).get(key, 0) >= servers
        except QfaError:
            return False

    what = f"an RPC server with key {key!r}" if servers == 1 else f"{servers} RPC servers with key {key!r}"
    _wait(ready, process, timeout, f"{what} at tracker {tracker[0]}:{tracker[1]}")


def _tracker_handshake(sock: socket.socket) -> None:
    sock.sendall(struct.pack("<i", _RPC_TRACKER_MAGIC))
    data = sock.recv(4)
    if len(data) != 4 or struct.unpack("<i", data)[0] != _RPC_TRACKER_MAGIC:
        raise ValueError("wrong magic")


def tracker_answers(host: str, port: int) -> bool:
    """Whether a TVM RPC tracker answers the handshake at host:port (within 2 s)."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            _tracker_handshake(sock)
            return True
    except (OSError, ValueError):
        return False


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _wait(ready: Callable[[], bool], process: ManagedProcess | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if process is not None and not process.alive():
            raise QfaError(f"{process.name} exited (status {process.popen.returncode}) before {what} was "
                           f"ready: {process.log_tail()}")
        if time.monotonic() > deadline:
            raise QfaError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)
