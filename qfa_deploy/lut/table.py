"""LatencyTable: measured part latencies plus a fitted correction, with provenance.

``predict(cfg) = scale * sum(entries[k] for k in arch_keys(cfg)) + offset_ms``. The linear fit
absorbs what summing parts misses (fusion across parts, runtime overhead per call); it is fitted on
end-to-end measurements of random subnets when the table is built. File format (JSON)::

    {"format": "qfa-lut", "version": 1, "space": ..., "resolution": 224, "bits_matter": false,
     "bit_kernels": [[240, 2, 2], ...],  # with bits_matter: see lut.bit_kernels
     "provenance": {"device": ..., "tvm_target": ..., "tvm_version": ..., "tuning_db": ...,
                    "protocol": {...}, "schedule": "tiled-vnni", "host_cpu": ..., "date": ...},
     "fit": {"scale": 1.0, "offset_ms": 0.0},
     "entries": {"block|56|24-144-24|k5|s1|se0|relu": 0.123, ...,
                 "block|2|80-240-80|k3|s1|se1|hswish|b442442": 0.101}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.checkpoint import atomic_write_bytes
from qfa_deploy.errors import QfaError
from qfa_deploy.lut.bit_kernels import BitKernels
from qfa_deploy.lut.keys import LatencyKey, arch_keys
from qfa_deploy.resources import packaged_table
from qfa_deploy.space import create_space
from qfa_deploy.strict_json import check_number, check_type, read_json

__all__ = ["LUT_VERSION", "LatencyTable"]

LUT_VERSION = 1
# bounds no measurement reaches (a part of 100 s, a fit scaling parts 1000x): beyond them a table is
# corrupt or forged, and its predictions would overflow into the search
MAX_MS = 1e5
MAX_SCALE = 1e3


@dataclass
class LatencyTable:
    space: str
    resolution: int
    entries: dict[str, float]
    bit_kernels: BitKernels | None = None  # the 1x1 convs whose parts are keyed on their bits
    scale: float = 1.0
    offset_ms: float = 0.0
    provenance: dict = field(default_factory=dict)

    def part_sum(self, cfg: ArchConfig) -> float:
        """Sum of the part latencies of ``cfg`` (ms), before the fitted correction."""
        if cfg.space != self.space:
            raise QfaError(f"arch of space {cfg.space!r} given to a table of space {self.space!r}")
        if cfg.resolution != self.resolution:
            raise QfaError(f"arch resolution {cfg.resolution} but the table is for {self.resolution}")
        total = 0.0
        for key in self.keys(cfg):
            try:
                total += self.entries[str(key)]
            except KeyError:
                raise QfaError(f"table has no entry {key} (built for another space or resolution?)") from None
        return total

    def keys(self, cfg: ArchConfig) -> list[LatencyKey]:
        """The keys of ``cfg``'s parts in this table (with bits where its ``bit_kernels`` say so)."""
        return arch_keys(cfg, self.bit_kernels.canonical if self.bit_kernels else None)

    def predict(self, cfg: ArchConfig) -> float:
        """Predicted end-to-end latency of ``cfg`` in ms."""
        return self.scale * self.part_sum(cfg) + self.offset_ms

    def prediction(self, cfg: ArchConfig) -> dict:
        """``lut predict``'s report of ``cfg``: arch (short form and digest), predicted and part-sum
        latency (ms), the table's device and whether it was emulated."""
        return {"arch": cfg.short(), "digest": cfg.digest(), "predicted_ms": self.predict(cfg),
                "part_sum_ms": self.part_sum(cfg), "device": self.provenance.get("device"),
                "emulated": self.provenance.get("emulated", False)}

    @property
    def bits_matter(self) -> bool:
        """Whether some parts' latencies depend on their bits (their keys carry them)."""
        return bool(self.bit_kernels)

    @property
    def schedule(self) -> str:
        """The CPU schedule its latencies were measured with (``compile_artifact``'s): compile with it
        to get what the table predicts; "auto" for tables that did not record it."""
        return str(self.provenance.get("schedule", "auto"))

    def stale_schedule(self) -> str | None:
        """A one-line warning when ``export`` would now compile for the table's device with another
        schedule than the table was measured with (its predictions would not describe that
        artifact); None when they agree or the device is not known here."""
        from qfa_deploy.deploy.compile import resolve_schedule

        device = self.provenance.get("device")
        if not device or self.schedule == "auto":
            return None
        try:
            current = resolve_schedule("auto", device)
        except QfaError:
            return None
        if current == self.schedule:
            return None
        return (f"warning: this table was measured with schedule {self.schedule}, export now compiles for "
                f"{device} with {current}: rebuild it, or export with --schedule {self.schedule}")

    def missing(self, keys: list[LatencyKey]) -> list[LatencyKey]:
        return [k for k in keys if str(k) not in self.entries]

    def to_dict(self) -> dict:
        return {
            "format": "qfa-lut",
            "version": LUT_VERSION,
            "space": self.space,
            "resolution": self.resolution,
            "bits_matter": self.bits_matter,
            **({"bit_kernels": self.bit_kernels.to_list()} if self.bits_matter else {}),
            "provenance": self.provenance,
            "fit": {"scale": self.scale, "offset_ms": self.offset_ms},
            "entries": dict(sorted(self.entries.items())),
        }

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """A table file, or a committed table by file name (``x86-1t-qfa-mbv3-cifar10-r32.json``)."""
        path = Path(path)
        if not path.exists() and (shipped := packaged_table(str(path))) is not None:
            path = shipped
        data = read_json(path, "latency table")  # NaN, 1e999 and huge integers refused here
        if not isinstance(data, dict) or data.get("format") != "qfa-lut":
            raise QfaError(f"{path}: not a qfa-deploy latency table")
        if data.get("version") != LUT_VERSION:
            raise QfaError(f"{path}: table version {data.get('version')!r}, this tool reads {LUT_VERSION}")
        try:
            entries = check_type(data["entries"], dict, f"{path}: entries")
            fit = check_type(data["fit"], dict, f"{path}: fit")
            return cls(
                space=check_type(data["space"], str, f"{path}: space"),
                resolution=check_number(data["resolution"], f"{path}: resolution", low=1, high=65536, integer=True),
                # a latency is a finite, non-negative number of milliseconds
                entries={str(k): float(check_number(v, f"{path}: entries[{k!r}]", low=0, high=MAX_MS))
                         for k, v in entries.items()},
                bit_kernels=_bit_kernels(data, path),
                scale=float(check_number(fit["scale"], f"{path}: fit.scale", low=0, high=MAX_SCALE)),
                offset_ms=float(check_number(fit["offset_ms"], f"{path}: fit.offset_ms", low=-MAX_MS, high=MAX_MS)),
                provenance=dict(check_type(data.get("provenance", {}), dict, f"{path}: provenance")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QfaError(f"{path}: malformed latency table ({exc.__class__.__name__}: {exc})") from None


def _bit_kernels(data: dict, path: Path) -> BitKernels | None:
    """A table file's ``bit_kernels`` ([input channels, weight bits, code bits] triples), None without."""
    triples = check_type(data.get("bit_kernels", []), list, f"{path}: bit_kernels")
    if bool(data.get("bits_matter", False)) != bool(triples):
        raise QfaError(f"{path}: bits_matter is {bool(data.get('bits_matter'))} but bit_kernels lists "
                       f"{len(triples)} convs (tables keyed on every bit are no longer read: rebuild it)")
    if not triples:
        return None
    rows = [tuple(check_number(v, f"{path}: bit_kernels", low=1, high=65536, integer=True) for v in
                  check_type(t, list, f"{path}: bit_kernels")) for t in triples]
    if any(len(r) != 3 for r in rows):
        raise QfaError(f"{path}: bit_kernels holds [input channels, weight bits, code bits] triples")
    space = create_space(check_type(data["space"], str, f"{path}: space"))
    return BitKernels(frozenset(rows), max(space.bit_choices))
