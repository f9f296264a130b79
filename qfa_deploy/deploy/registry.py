"""Which schedule a target gets: the schedules each target package offers, picked by name or by features.

A target package (``qfa_deploy.deploy.targets.x86``, ``...targets.arm``, ``...targets.cuda``) lists its
schedules in ``SCHEDULES``, best first, each a :class:`TargetSchedule` naming the CPU features it needs
(CPU packages also cut their tiles for a :class:`VectorUnit`). ``TARGET_PACKAGES`` maps a target's key
(``target_key``: an LLVM target's architecture, else its kind) to its package. ``resolve(name, device)``
returns the one to apply:

- ``auto`` (the default): the device profile's own ``schedule`` if it names one, else the first of
  its target's schedules whose features the target has (x86: ``tiled-vnni`` with AVX512-VNNI,
  else ``tiled-cpu``; aarch64: ``tiled-dotprod`` with the dot-product extension, else
  ``tiled-neon``; CUDA: ``dlight``, the GPU schedule TVM's own CUDA pipeline applies);
- a name: that schedule, or one line saying why this target cannot take it.

Importing this module imports neither TVM nor the target packages' lowerings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from qfa_deploy.errors import QfaError

__all__ = [
    "AUTO", "NONE", "TARGET_PACKAGES", "TargetSchedule", "VectorUnit", "describe_target", "resolve",
    "schedule_names", "target_arch", "target_key",
]

AUTO, NONE = "auto", "none"
# target key (an LLVM triple's first field, else the target kind) -> the package holding its schedules
TARGET_PACKAGES = {"x86_64": "qfa_deploy.deploy.targets.x86", "aarch64": "qfa_deploy.deploy.targets.arm",
                   "cuda": "qfa_deploy.deploy.targets.cuda"}
_SPARE_REGISTERS = 4  # vector registers a tile leaves for its operands (AVX2: 16 - 4 = 12 accumulators)


@dataclass(frozen=True)
class VectorUnit:
    """The vector registers a schedule's tiles are cut for: ``bits`` per register, ``registers`` of them."""

    bits: int
    registers: int

    def __post_init__(self):
        if self.bits not in (128, 256, 512) or not 8 <= self.registers <= 64:
            raise ValueError(f"unsupported vector unit: {self.bits} bits x {self.registers} registers")

    def lanes(self, element_bits: int = 32) -> int:
        """Elements of ``element_bits`` per register."""
        return self.bits // element_bits

    @property
    def accumulators(self) -> int:
        """Registers a register tile may keep its sums in."""
        return self.registers - _SPARE_REGISTERS

    def registers_for(self, lanes: int, element_bits: int = 32) -> int:
        """Registers holding ``lanes`` elements (at least one)."""
        return max(1, -(-lanes * element_bits // self.bits))


@dataclass(frozen=True)
class TargetSchedule:
    """One schedule of one target architecture."""

    name: str  # the --schedule value
    label: str  # what an artifact's meta.json records
    arch: str  # a TARGET_PACKAGES key
    # (legalized, fused Relax module) -> module; None: tvm.compile's own pipeline for the target applies
    # it (the module is handed over as imported)
    apply: Callable | None
    rewrite: Callable | None = None  # (imported Relax module, before legalization) -> module
    needs: tuple[str, ...] = ()  # LLVM CPU features the target must have
    summary: str = ""
    # (input channels, weight bits, code bits) -> whether a 1x1 conv at these bits runs a kernel of its
    # own, cheaper than at the space's highest bits; None: the bits never change the kernels (their
    # clamp bounds only). Latency tables key those convs' parts on their bits (``lut.bit_kernels``).
    bit_kernel: Callable[[int, int, int], bool] | None = None


def _package(arch: str):
    return importlib.import_module(TARGET_PACKAGES[arch])


def _all_schedules() -> list[TargetSchedule]:
    return [s for arch in TARGET_PACKAGES for s in _package(arch).SCHEDULES]


def schedule_names() -> tuple[str, ...]:
    """Every ``--schedule`` value: auto, each target's schedules (first seen first), none."""
    names = dict.fromkeys(s.name for s in _all_schedules())
    return (AUTO, *names, NONE)


def target_arch(target) -> str | None:
    """The architecture of an LLVM ``tvm.target.Target`` ("x86_64", "aarch64", ...), None for other kinds."""
    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", "") or "")
    if not triple:
        from tvm.target.codegen import llvm_get_system_triple

        triple = str(llvm_get_system_triple())
    return triple.split("-", 1)[0]


def target_key(target) -> str:
    """The TARGET_PACKAGES key of a ``tvm.target.Target``: an LLVM target's architecture, else its kind."""
    return target_arch(target) or target.kind.name


def describe_target(target) -> str:
    """A target in one short line: kind, triple, CPU and attributes (no JSON dump)."""
    attrs = target.attrs
    parts = [target.kind.name, str(attrs.get("mtriple", "") or ""), str(attrs.get("mcpu", "") or "")]
    parts += [str(a) for a in (attrs.get("mattr", None) or [])]
    return " ".join(p for p in parts if p)


def resolve(name: str, device) -> TargetSchedule | None:
    """The schedule ``compile_artifact`` applies on ``device`` (a name, path or Device) for ``name``;
    None for "none" and, under "auto", for a target no package (or none of its schedules) fits.

    Raises:
        QfaError: an unknown name, or a schedule the device's target cannot run (one line).
    """
    from qfa_deploy.deploy.device import load_device

    names = schedule_names()
    if name not in names:
        raise QfaError(f"schedule must be one of {', '.join(names)}, not {name!r}")
    dev = load_device(device)
    if name == AUTO and dev.schedule != AUTO:
        if dev.schedule not in names:
            raise QfaError(f"device {dev.name} names schedule {dev.schedule!r}; known: {', '.join(names)}")
        name = dev.schedule
    if name == NONE:
        return None
    target = dev.tvm_target()
    key = target_key(target)
    own = _package(key).SCHEDULES if key in TARGET_PACKAGES else ()
    if name == AUTO:
        return next((s for s in own if _has(target, s.needs)), None)
    chosen = next((s for s in own if s.name == name), None)
    if chosen is None and target.kind.name != "llvm":
        raise QfaError(f"schedule {name} is for CPU targets; device {dev.name} is a {target.kind.name} target"
                       + (f" (its schedules: {', '.join(s.name for s in own)})" if own else ""))
    if chosen is None:
        others = ", ".join(s.name for s in own) or "none"
        raise QfaError(f"schedule {name} is not one for {key} targets (device {dev.name}; its schedules: {others})")
    if not _has(target, chosen.needs):
        raise QfaError(f"schedule {name} needs a CPU with {'+'.join(chosen.needs)}; device {dev.name}'s target "
                       f"({describe_target(target)}) has none: use --schedule auto")
    return chosen


def _has(target, features: tuple[str, ...]) -> bool:
    if not features:
        return True
    from tvm.target.codegen import target_has_features

    return all(bool(target_has_features(f, target)) for f in features)
