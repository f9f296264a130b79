"""Run a compiled library where a device profile says: in this process, or over TVM RPC.

``open_session(device)`` returns a :class:`Session` that loads ``model.so`` into a Relax VM on the
device, runs it on numpy inputs and times it with ``time_evaluator`` per the device's protocol.
Connecting is bounded: an unreachable tracker or a key with no board is a one-line QfaError.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import platform
import socket
from pathlib import Path

import numpy as np

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.cpu_share import CpuShare
from qfa_deploy.deploy.device import Device, MeasureProtocol, Timing
from qfa_deploy.deploy.elf import elf_machine
from qfa_deploy.errors import QfaError

__all__ = ["Session", "Timing", "elf_machine", "open_session"]

log = logging.getLogger(__name__)

# runtime.config_threadpool affinity modes. Remote boards (e.g. a Pi's four equal cores): the "big"
# cores. Here: one worker per CPU this process may use, named explicitly - the "big" mode ranks cores
# by their reported frequency, and on a VM that can leave a pool of one thread (2 threads ran no
# faster than 1) and ignores a `taskset` mask.
_THREADPOOL_BIG_CORES = 1
_THREADPOOL_ONE_CORE_PER_THREAD = -2
# The CPUs this process may use (its `taskset` mask), read before TVM's pool starts any thread.
_ALLOWED_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


class Session:
    """A device to run libraries on (local or remote). Use as a context manager."""

    def __init__(self, device: Device, remote=None):
        self.device = device
        self.remote = remote  # tvm.rpc.RPCSession, or None for this process
        self._threads_set = False
        self._pinned_cpus: list[str] = []  # the local pool's CPUs while this session has it
        self._uploads = itertools.count()  # each upload gets a name of its own (see load)

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def tvm_device(self):
        import tvm

        kind = self.device.target_kind
        if self.remote is not None:
            dev = self.remote.cuda(0) if kind == "cuda" else self.remote.cpu(0)
        else:
            dev = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
            if kind == "cuda" and not dev.exist:
                raise QfaError(f"device {self.device.name} needs a CUDA GPU, and this machine has none")
        return dev

    def load(self, lib_path: Path):
        """A Relax VM running ``lib_path`` on this session's device."""
        from tvm import relax

        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise QfaError(f"{lib_path} does not exist")
        if self.remote is None:
            machine = elf_machine(lib_path)
            host = _host_machine()
            if machine is not None and machine != host:
                raise QfaError(f"{lib_path} is built for {machine} and this machine is {host}: profile it on its "
                               "device (e.g. --device rasp4b or rasp4b-emulated)")
        self._pin_threads()
        try:
            if self.remote is None:
                import tvm

                module = tvm.runtime.load_module(str(lib_path))
            else:
                # A new remote file per load: uploading over a library the session has already loaded
                # rewrites a mapped file in place and the device's dlopen hands back the stale handle
                # (the emulated Pi segfaulted in dlsym on the second part of a `lut build`).
                name = f"qfa-{os.getpid()}-{next(self._uploads)}-{lib_path.name}"
                self.remote.upload(str(lib_path), target=name)
                module = self.remote.load_module(name)
            return relax.VirtualMachine(module, self.tvm_device())
        except QfaError:
            raise
        except Exception as exc:
            raise QfaError(f"device {self.device.name} cannot load {lib_path}: {one_line(exc)}") from None

    def run(self, vm, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of ``main`` on ``inputs``, copied back to numpy."""
        args = self._to_device(inputs)
        try:
            result = vm["main"](*args)
        except Exception as exc:
            raise QfaError(f"running the model on {self.device.name} failed: {one_line(exc)}") from None
        return _to_numpy(result)

    def time(self, vm, inputs: list[np.ndarray], protocol: MeasureProtocol | None = None) -> Timing:
        """Warm up, then ``protocol.repeat`` timed repeats of ``main`` (time_evaluator)."""
        protocol = protocol or self.device.protocol
        args = self._to_device(inputs)
        # on this machine: whether other work shared the CPUs meanwhile (the repeats would stretch)
        share = None
        if self.remote is None and self.device.target_kind != "cuda":
            share = CpuShare(int(c) for c in self._pinned_cpus) if self._pinned_cpus else CpuShare()
        try:
            for _ in range(protocol.warmup):
                vm["main"](*args)
            evaluator = vm.time_evaluator(
                "main", self.tvm_device(), number=protocol.number, repeat=protocol.repeat,
                min_repeat_ms=protocol.min_repeat_ms,
            )
            with share or contextlib.nullcontext():
                result = evaluator(*args)
        except Exception as exc:
            raise QfaError(f"timing the model on {self.device.name} failed: {one_line(exc)}") from None
        return Timing(tuple(float(s) for s in result.results), protocol, self.device.threads,
                      foreign_cpu=share.foreign if share else None)

    def layer_times(self, lib_path: Path, inputs: list[np.ndarray]) -> dict:
        """Where an inference's time goes, per compiled function and kind of layer (``deploy.layer_times``)."""
        from qfa_deploy.deploy.layer_times import measure_library

        if self.remote is not None:
            raise QfaError(f"per-layer times need the model in this process or a simulated device: {self.device.name} "
                           "runs it over RPC, where the VM cannot call back (profile it without --layers)")
        if self.device.target_kind == "cuda":
            raise QfaError(f"per-layer times are not measured on {self.device.name}: CUDA kernels run asynchronously "
                           "to the VM's calls (profile it without --layers)")
        self._pin_threads()
        try:
            return measure_library(Path(lib_path), self.tvm_device(), self._to_device(inputs))
        except Exception as exc:
            raise QfaError(f"per-layer timing on {self.device.name} failed: {one_line(exc)}") from None

    def close(self) -> None:
        if self.remote is None and self._pinned_cpus:
            self._release_threads()
        self.remote = None  # the RPC session closes when its last reference goes

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _to_device(self, inputs):
        import tvm

        dev = self.tvm_device()
        return [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]

    def _pin_threads(self) -> None:
        threads = self.device.threads
        if self._threads_set or threads <= 0 or self.device.target_kind == "cuda":
            return
        try:
            if self.remote is None:
                import tvm

                cpus = sorted(_ALLOWED_CPUS) or list(range(os.cpu_count() or threads))
                threads = min(threads, len(cpus))
                configure = tvm.get_global_func("runtime.config_threadpool")
                self._pinned_cpus = [str(c) for c in cpus[:threads]]
                configure(_THREADPOOL_ONE_CORE_PER_THREAD, threads, self._pinned_cpus)
            else:
                self.remote.get_function("runtime.config_threadpool")(_THREADPOOL_BIG_CORES, threads)
        except Exception as exc:  # a runtime without a thread pool: run with its defaults
            log.warning("could not pin %d threads on %s: %s", threads, self.device.name, one_line(exc))
        self._threads_set = True

    def _release_threads(self) -> None:
        """Shrink this process's pool back to its own thread. Left to the interpreter's exit, TVM's
        pool waited minutes for a worker pinned to a core another process kept busy (`qfa-deploy
        profile` on 2 threads beside a training job: done in 5 s, exited after 4 min)."""
        import tvm

        try:
            tvm.get_global_func("runtime.config_threadpool")(_THREADPOOL_ONE_CORE_PER_THREAD, 1, self._pinned_cpus[:1])
        except Exception as exc:
            log.warning("could not release the thread pool of %s: %s", self.device.name, one_line(exc))
        if _ALLOWED_CPUS:  # that pool of one pins this thread to the first CPU: give it its mask back
            os.sched_setaffinity(0, _ALLOWED_CPUS)
        self._pinned_cpus, self._threads_set = [], False


def open_session(device: Device, *, timeout: float = 30.0, session_timeout: float = 0) -> Session:
    """Connect to ``device``'s runner. RPC connections fail with a QfaError within ~``timeout`` s.

    Args:
        device: the profile (its runner says where).
        timeout: seconds to reach the tracker/server and to be granted a board.
        session_timeout: seconds the server keeps the session (0: no limit).
    """
    runner = device.runner
    if runner.kind == "local":
        return Session(device)
    if runner.kind == "simulated":
        from qfa_deploy.deploy.sim.session import SimulatedSession

        return SimulatedSession(device)
    from tvm import rpc

    _probe(runner.host, runner.port, timeout, "RPC tracker" if runner.kind == "rpc-tracker" else "RPC server")
    if runner.kind == "rpc-direct":
        try:
            remote = rpc.connect(runner.host, runner.port, session_timeout=session_timeout)
        except Exception as exc:
            raise QfaError(f"RPC server {runner.address} refused the session: {one_line(exc)}") from None
        return Session(device, remote)

    from qfa_deploy.deploy.procs import tracker_keys

    keys = tracker_keys(runner.host, runner.port, timeout=timeout)
    if runner.key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise QfaError(f"no device is registered under key {runner.key!r} at tracker {runner.address} "
                       f"(keys there: {known})")
    try:
        tracker = rpc.connect_tracker(runner.host, runner.port)
        tracker._sock.settimeout(timeout)  # request() otherwise waits forever for a busy board
        remote = tracker.request(runner.key, max_retry=1, session_timeout=session_timeout)
    except Exception as exc:
        raise QfaError(f"no board under key {runner.key!r} at tracker {runner.address} became free within "
                       f"{timeout:.0f} s ({one_line(exc)})") from None
    tracker.close()
    return Session(device, remote)


def _host_machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _probe(host: str, port: int, timeout: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise QfaError(f"cannot reach the {what} at {host}:{port}: {reason}") from None


def _to_numpy(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outputs = []
    for item in result:  # a tuple of outputs
        outputs.extend(_to_numpy(item))
    return outputs
