"""Device profiles: what to compile for, with which compiler, and where and how to measure.

A profile is one small JSON file (``qfa_deploy/assets/devices/NAME.json``, ``devices/`` in a checkout, or
any path).
``load_device(name_or_path)`` is the only way in; ``list_devices()`` names the known ones.

Fields::

    version     1
    name        the device's name (also the file's stem for files in devices/)
    target      a TVM target: a tag string ("raspberry-pi/4b-aarch64") or a dict
                ({"kind": "llvm", "mcpu": "host"}); mcpu "host" is resolved on load
    cc          cross compiler for export_library (null: the host's)
    runner      {"kind": "local"} | {"kind": "rpc-tracker", "host", "port", "key"}
                | {"kind": "rpc-direct", "host", "port"}
                | {"kind": "simulated", "cpu"}: cycles estimated by qfa_deploy.deploy.sim
                  (cpu: cortex-a72, cortex-a76 or znver4), reported as time at its nominal clock
    threads     runtime threads pinned on the device (0: the runtime's default)
    protocol    {"warmup", "number", "repeat", "min_repeat_ms"}: see time_evaluator
    emulated    true when the device is an emulator: its timings are not latency
    schedule    the schedule "auto" means on this device (default "auto": by the target's
                features, see ``qfa_deploy.deploy.registry``)
    description free text
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from qfa_deploy.deploy._text import one_line
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import devices_dir
from qfa_deploy.strict_json import parse_json

__all__ = [
    "ALIASES",
    "Device",
    "MeasureProtocol",
    "RunnerSpec",
    "device_dirs",
    "host_cpu",
    "list_devices",
    "load_device",
]

DEVICE_VERSION = 1
RUNNER_KINDS = ("local", "rpc-tracker", "rpc-direct", "simulated")
MAX_THREADS = 4096
# Short names the exporter's ``--target x86|arm64|cuda`` uses.
ALIASES = {"arm64": "rasp4b", "cuda": "cuda-sm80"}
_FIELDS = {"version", "name", "description", "target", "cc", "runner", "threads", "protocol", "emulated", "schedule"}


@dataclass(frozen=True)
class MeasureProtocol:
    """How a latency is measured: ``warmup`` untimed runs, then ``repeat`` timed repeats, each the
    mean of ``number`` runs (raised by the runtime until a repeat lasts ``min_repeat_ms``).

    ``statistic`` is the repeat statistic that latency tables are built and validated on: the
    median on a dedicated device; the minimum on a shared host, where other tenants only ever add
    time and the median drifts with their load.
    """

    warmup: int = 5
    number: int = 10
    repeat: int = 30
    min_repeat_ms: int = 50
    statistic: str = "median"

    STATISTICS = ("median", "min")

    def __post_init__(self):
        # upper bounds: a protocol past them would measure for days (an hour of repeats, a minute each)
        for name, low, high in (("warmup", 0, 10_000), ("number", 1, 1_000_000), ("repeat", 1, 10_000),
                                ("min_repeat_ms", 0, 60_000)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"protocol.{name} must be an integer in [{low}, {high}], not {value!r}")
        if self.statistic not in self.STATISTICS:
            raise ValueError(f"protocol.statistic must be one of {', '.join(self.STATISTICS)}, not {self.statistic!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def latency(self, summary_ms: dict) -> float:
        """The latency (ms) this protocol stands for, from a :meth:`Timing.summary_ms` dict."""
        return float(summary_ms[self.statistic])


@dataclass(frozen=True)
class Timing:
    """Seconds per run of each timed repeat, and the protocol that produced them."""

    seconds: tuple[float, ...]
    protocol: MeasureProtocol
    threads: int
    # the share of the measuring CPUs' time that went to other work meanwhile (``deploy.cpu_share``):
    # local runs on Linux; None where it is not known (remote boards, simulation)
    foreign_cpu: float | None = None

    def summary_ms(self) -> dict:
        ms = np.asarray(self.seconds, dtype=np.float64) * 1e3
        summary = {
            "median": float(np.median(ms)),
            "p10": float(np.percentile(ms, 10)),
            "p90": float(np.percentile(ms, 90)),
            "mean": float(ms.mean()),
            "min": float(ms.min()),
            "max": float(ms.max()),
        }
        if self.foreign_cpu is not None:
            summary["foreign_cpu"] = round(self.foreign_cpu, 4)
        return summary


@dataclass(frozen=True)
class RunnerSpec:
    """Where the compiled library runs: in this process, or on a TVM RPC server."""

    kind: str = "local"
    host: str | None = None
    port: int | None = None
    key: str | None = None
    cpu: str | None = None  # simulated only

    def __post_init__(self):
        if self.kind not in RUNNER_KINDS:
            raise ValueError(f"runner.kind must be one of {', '.join(RUNNER_KINDS)}, not {self.kind!r}")
        if self.kind == "simulated":
            from qfa_deploy.deploy.sim.estimate import CPUS

            if self.cpu not in CPUS:
                raise ValueError(f"runner.cpu must be one of {', '.join(CPUS)} for a simulated device, "
                                 f"not {self.cpu!r}")
        elif self.cpu is not None:
            raise ValueError(f"runner.cpu is only for simulated devices, not {self.kind}")
        if self.kind not in ("local", "simulated"):
            if not isinstance(self.host, str) or not self.host:
                raise ValueError(f"runner.host is required for {self.kind}")
            if not isinstance(self.port, int) or not 0 < self.port < 65536:
                raise ValueError(f"runner.port must be a TCP port, not {self.port!r}")
        if self.kind == "rpc-tracker" and (not isinstance(self.key, str) or not self.key):
            raise ValueError("runner.key is required for rpc-tracker")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Device:
    """One device profile (see the module docstring for the fields)."""

    name: str
    target: Any  # tag string or dict, as written in the file (mcpu "host" already resolved)
    runner: RunnerSpec = field(default_factory=RunnerSpec)
    cc: str | None = None
    threads: int = 0
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)
    emulated: bool = False
    description: str = ""
    source: str | None = None  # the file it came from
    schedule: str = "auto"  # checked against the registry when resolved (registry.resolve)

    def __post_init__(self):
        if not isinstance(self.target, (str, dict)) or not self.target:
            raise ValueError("target must be a TVM target tag (string) or a dict with a 'kind'")
        if isinstance(self.target, dict) and "kind" not in self.target:
            raise ValueError("target dict needs a 'kind'")
        if self.cc is not None and (not isinstance(self.cc, str) or not self.cc):
            raise ValueError("cc must be a compiler name or null")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 0 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer in [0, {MAX_THREADS}], not {self.threads!r}")
        if not isinstance(self.emulated, bool):
            raise ValueError("emulated must be true or false")
        if not isinstance(self.schedule, str) or not self.schedule:
            raise ValueError("schedule must be a schedule name (or \"auto\")")

    def tvm_target(self):
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm

        try:
            return tvm.target.Target(self.target)
        except Exception as exc:  # TVM raises several kinds for a bad target
            raise QfaError(f"device {self.name}: invalid TVM target {self.target!r}: {one_line(exc)}") from None

    @property
    def target_kind(self) -> str:
        """"llvm" or "cuda" (the kind of the target, without importing TVM for dict targets)."""
        if isinstance(self.target, dict):
            return self.target["kind"]
        return self.tvm_target().kind.name

    def with_runner(self, **changes) -> Device:
        """This device with some runner fields changed (e.g. another tracker address)."""
        try:
            return replace(self, runner=replace(self.runner, **changes))
        except ValueError as exc:
            raise QfaError(f"device {self.name}: {exc}") from None

    def to_dict(self) -> dict:
        return {
            "version": DEVICE_VERSION,
            "name": self.name,
            "description": self.description,
            "target": self.target,
            "cc": self.cc,
            "runner": self.runner.to_dict(),
            "threads": self.threads,
            "protocol": self.protocol.to_dict(),
            "emulated": self.emulated,
            "schedule": self.schedule,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> Device:
        """Validate and build; raises ValueError with a short reason."""
        if not isinstance(data, dict):
            raise ValueError("a device profile is a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        version = data.get("version", DEVICE_VERSION)
        if version != DEVICE_VERSION:
            raise ValueError(f"version {version!r} is not supported (expected {DEVICE_VERSION})")
        for required in ("name", "target"):
            if required not in data:
                raise ValueError(f"missing field {required!r}")
        if not isinstance(data["name"], str) or not data["name"]:
            raise ValueError("name must be a non-empty string")
        runner = data.get("runner", {"kind": "local"})
        protocol = data.get("protocol", {})
        if not isinstance(runner, dict):
            raise ValueError("runner must be an object")
        if not isinstance(protocol, dict):
            raise ValueError("protocol must be an object")
        try:
            runner_spec = RunnerSpec(**runner)
            protocol_spec = MeasureProtocol(**protocol)
        except TypeError as exc:  # unknown keyword
            raise ValueError(str(exc).replace("__init__() ", "")) from None
        return cls(
            name=data["name"],
            target=_resolve_host_cpu(data["target"]),
            runner=runner_spec,
            cc=data.get("cc"),
            threads=data.get("threads", 0),
            protocol=protocol_spec,
            emulated=data.get("emulated", False),
            description=data.get("description", ""),
            source=source,
            schedule=data.get("schedule", "auto"),
        )


def device_dirs() -> list[Path]:
    """Where named profiles are looked up: $QFA_DEVICES (os.pathsep-separated), then the package's own."""
    dirs = [Path(p) for p in os.environ.get("QFA_DEVICES", "").split(os.pathsep) if p]
    dirs.append(devices_dir())
    return dirs


def list_devices() -> list[str]:
    """Names of the profiles found in :func:`device_dirs` (aliases not included)."""
    names = set()
    for folder in device_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json"))
    return sorted(names)


def load_device(name_or_path: str | Path) -> Device:
    """The device profile named ``name_or_path`` (a name, an alias, or a path to a JSON file).

    Raises:
        QfaError: unknown device, unreadable or malformed file (one line).
    """
    if isinstance(name_or_path, Device):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix == ".json" or os.sep in text or (os.altsep and os.altsep in text)
    if not looks_like_path:
        name = ALIASES.get(text, text)
        for folder in device_dirs():
            candidate = folder / f"{name}.json"
            if candidate.is_file():
                path = candidate
                break
        else:
            known = ", ".join(list_devices() + sorted(ALIASES))
            raise QfaError(f"unknown device {text!r} (known: {known}; or give a path to a device .json file)")
    if not path.is_file():
        raise QfaError(f"device file {path} does not exist")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise QfaError(f"cannot read device file {path}: {exc.strerror or exc}") from None
    data = parse_json(text, f"device file {path}")  # NaN, 1e999, huge integers: one line
    try:
        return Device.from_dict(data, source=str(path))
    except ValueError as exc:
        raise QfaError(f"malformed device file {path}: {one_line(exc)}") from None


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (what clang's -mcpu=native picks), e.g. "znver2".

    LLVM reads CPUID (the family/model/features /proc/cpuinfo also shows); "generic" if it cannot tell.
    """
    try:
        from tvm.target import codegen

        name = str(codegen.llvm_get_system_cpu())
    except Exception:  # TVM built without LLVM
        name = ""
    return name or "generic"


def _resolve_host_cpu(target):
    if isinstance(target, dict):
        target = dict(target)
        if target.get("mcpu") == "host":
            target["mcpu"] = host_cpu()
        if isinstance(target.get("host"), dict):
            target["host"] = _resolve_host_cpu(target["host"])
    return target
