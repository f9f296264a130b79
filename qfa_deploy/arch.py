"""ArchConfig: one subnet of a search space, the currency every stage of the pipeline speaks.

A config is frozen, validated and canonical on construction: entries of inactive blocks (those past
a stage's depth) are reset to the first choice of each list, so the same subnet always compares and
hashes equal. ``cfg.json`` is its readable, versioned JSON form::

    {"format": "qfa-arch", "version": 1, "space": "qfa-mbv3-w1.2", "resolution": 224,
     "depths": [4, 4, 4, 4, 4],
     "first_block": {"w_bits": [4, 4], "a_bits": [4, 4]},          # depthwise, project
     "blocks": [{"kernel": 7, "expand": 6, "w_bits": [4, 4, 4], "a_bits": [4, 4, 4]}, ...],
     "final_expand": {"w_bits": 4, "a_bits": 4},
     "feature_mix": {"w_bits": 4, "a_bits": 4}}                     # version 2, elastic-mix spaces

``w_bits``/``a_bits`` of a block are for its expand 1x1, depthwise kxk and project 1x1 convs; the
activation bits are those of each conv's input. ``feature_mix`` exists only in spaces whose
feature-mix conv has bit choices (``qfa-mbv3-w1.2`` from its version 2); elsewhere that conv runs at
the space's fixed bits and configs keep version 1, so their digests do not change. A version-1
config of such a space still loads, with a one-line note, at the largest feature-mix bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from qfa_deploy.errors import QfaError
from qfa_deploy.space import SearchSpace, create_space
from qfa_deploy.strict_json import parse_json

__all__ = ["ARCH_FORMAT_VERSION", "ArchConfig", "load_arch", "sample_arch"]

ARCH_FORMAT_VERSION = 2  # the newest; configs of spaces without feature-mix bits are written as 1
READ_VERSIONS = (1, 2)
log = logging.getLogger(__name__)
CONVS_PER_BLOCK = 3  # expand, depthwise, project
FIRST_BLOCK_CONVS = 2  # depthwise, project (expand ratio 1)


def _check_choice(field: str, value: Any, allowed: Sequence[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise QfaError(f"{field} = {value!r} is not one of {list(allowed)}")


def _check_length(field: str, value: Any, length: int) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        n = len(value) if isinstance(value, (list, tuple)) else None
        got = repr(value) if n is None else f"{n} entry" if n == 1 else f"{n} entries"
        raise QfaError(f"{field} must be a list of {length} entries, got {got}")


@dataclass(frozen=True)
class ArchConfig:
    """One subnet: resolution, per-stage depth, per-block kernel/expand, per-conv bits."""

    space: str
    resolution: int
    depths: tuple[int, ...]
    kernel: tuple[int, ...]
    expand: tuple[int, ...]
    w_bits: tuple[tuple[int, int, int], ...]
    a_bits: tuple[tuple[int, int, int], ...]
    first_w_bits: tuple[int, int]
    first_a_bits: tuple[int, int]
    final_w_bits: int
    final_a_bits: int
    # Feature-mix conv bits; None means the space's only choice (its fixed bits without mix choices).
    mix_w_bits: int | None = None
    mix_a_bits: int | None = None

    def __post_init__(self) -> None:
        sp = create_space(self.space)
        _check_choice("resolution", self.resolution, sp.resolutions)
        _check_length("depths", self.depths, sp.num_stages)
        for i, d in enumerate(self.depths):
            _check_choice(f"depths[{i}]", d, sp.depth_choices)
        for name in ("kernel", "expand", "w_bits", "a_bits"):
            _check_length(f"blocks[*].{name}", getattr(self, name), sp.num_blocks)
        for i in range(sp.num_blocks):
            _check_choice(f"blocks[{i}].kernel", self.kernel[i], sp.kernel_choices)
            _check_choice(f"blocks[{i}].expand", self.expand[i], sp.expand_choices)
            for name in ("w_bits", "a_bits"):
                bits = getattr(self, name)[i]
                _check_length(f"blocks[{i}].{name}", bits, CONVS_PER_BLOCK)
                for j, b in enumerate(bits):
                    _check_choice(f"blocks[{i}].{name}[{j}]", b, sp.bit_choices)
        for name in ("first_w_bits", "first_a_bits"):
            bits = getattr(self, name)
            label = f"first_block.{name.removeprefix('first_')}"
            _check_length(label, bits, FIRST_BLOCK_CONVS)
            for j, b in enumerate(bits):
                _check_choice(f"{label}[{j}]", b, sp.bit_choices)
        _check_choice("final_expand.w_bits", self.final_w_bits, sp.bit_choices)
        _check_choice("final_expand.a_bits", self.final_a_bits, sp.bit_choices)
        for name in ("mix_w_bits", "mix_a_bits"):
            value = getattr(self, name)
            if value is None and not sp.elastic_mix:
                object.__setattr__(self, name, sp.fixed_bits)
            else:
                _check_choice(f"feature_mix.{name.removeprefix('mix_')}", value, sp.mix_choices)
        self._canonicalise(sp)

    def _canonicalise(self, sp: SearchSpace) -> None:
        active = set(self.active_blocks())
        k0, e0, b0 = sp.kernel_choices[0], sp.expand_choices[0], sp.bit_choices[0]
        pick = lambda seq, default: tuple(  # noqa: E731
            tuple(v) if i in active and isinstance(v, (list, tuple)) else (v if i in active else default)
            for i, v in enumerate(seq)
        )
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("depths", tuple(self.depths))
        set_("kernel", pick(self.kernel, k0))
        set_("expand", pick(self.expand, e0))
        set_("w_bits", pick(self.w_bits, (b0,) * CONVS_PER_BLOCK))
        set_("a_bits", pick(self.a_bits, (b0,) * CONVS_PER_BLOCK))
        set_("first_w_bits", tuple(self.first_w_bits))
        set_("first_a_bits", tuple(self.first_a_bits))

    # -- structure ---------------------------------------------------------------------------

    @property
    def search_space(self) -> SearchSpace:
        return create_space(self.space)

    def active_blocks(self) -> list[int]:
        """Indices (0..num_blocks-1) of the elastic blocks this subnet runs, in order."""
        max_depth = create_space(self.space).max_depth
        return [s * max_depth + j for s, d in enumerate(self.depths) for j in range(d)]

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        elastic_mix = self.search_space.elastic_mix
        out = {
            "format": "qfa-arch",
            "version": ARCH_FORMAT_VERSION if elastic_mix else 1,
            "space": self.space,
            "resolution": self.resolution,
            "depths": list(self.depths),
            "first_block": {"w_bits": list(self.first_w_bits), "a_bits": list(self.first_a_bits)},
            "blocks": [
                {"kernel": k, "expand": e, "w_bits": list(w), "a_bits": list(a)}
                for k, e, w, a in zip(self.kernel, self.expand, self.w_bits, self.a_bits, strict=True)
            ],
            "final_expand": {"w_bits": self.final_w_bits, "a_bits": self.final_a_bits},
        }
        if elastic_mix:
            out["feature_mix"] = {"w_bits": self.mix_w_bits, "a_bits": self.mix_a_bits}
        return out

    @classmethod
    def from_dict(cls, data: Any, expect_space: str | None = None) -> ArchConfig:
        if not isinstance(data, dict):
            raise QfaError("arch config must be a JSON object")
        if data.get("format", "qfa-arch") != "qfa-arch":
            raise QfaError(f"format = {data.get('format')!r} is not 'qfa-arch'")
        version = data.get("version", ARCH_FORMAT_VERSION)
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise QfaError(f"version = {version!r}: this tool reads versions {', '.join(map(str, READ_VERSIONS))}")
        known = {"format", "version", "space", "resolution", "depths", "first_block", "blocks", "final_expand"}
        space = data.get("space")
        elastic_mix = isinstance(space, str) and create_space(space).elastic_mix
        if elastic_mix and version >= 2:
            known.add("feature_mix")
        unknown = sorted(set(data) - known)
        if unknown:
            raise QfaError(f"unknown field {unknown[0]!r} (expected: {', '.join(sorted(known))})")
        for key in sorted(known - {"format", "version"}):
            if key not in data:
                raise QfaError(f"missing field {key!r}")
        space = data["space"]
        if not isinstance(space, str):
            raise QfaError(f"space = {space!r} must be a string")
        sp = create_space(space)
        if expect_space is not None and space != expect_space:
            raise QfaError(f"arch config is for space {space!r}, but the model is of space {expect_space!r}")
        blocks = data["blocks"]
        _check_length("blocks", blocks, sp.num_blocks)
        for i, b in enumerate(blocks):
            if not isinstance(b, dict) or set(b) != {"kernel", "expand", "w_bits", "a_bits"}:
                raise QfaError(f"blocks[{i}] must be an object with kernel, expand, w_bits, a_bits")
        first, final = data["first_block"], data["final_expand"]
        mix = data.get("feature_mix", {"w_bits": None, "a_bits": None})
        for label, obj in (("first_block", first), ("final_expand", final), ("feature_mix", mix)):
            if not isinstance(obj, dict) or set(obj) != {"w_bits", "a_bits"}:
                raise QfaError(f"{label} must be an object with w_bits and a_bits")
        if elastic_mix and version < 2:
            top = max(sp.mix_choices)
            log.warning("a version-1 %s config has no feature-mix bits: using w%da%d (write version 2 to choose)",
                        space, top, top)
            mix = {"w_bits": top, "a_bits": top}
        return cls(
            space=space,
            resolution=data["resolution"],
            depths=_as_tuple("depths", data["depths"]),
            kernel=tuple(b["kernel"] for b in blocks),
            expand=tuple(b["expand"] for b in blocks),
            w_bits=tuple(_as_tuple(f"blocks[{i}].w_bits", b["w_bits"]) for i, b in enumerate(blocks)),
            a_bits=tuple(_as_tuple(f"blocks[{i}].a_bits", b["a_bits"]) for i, b in enumerate(blocks)),
            first_w_bits=_as_tuple("first_block.w_bits", first["w_bits"]),
            first_a_bits=_as_tuple("first_block.a_bits", first["a_bits"]),
            final_w_bits=final["w_bits"],
            final_a_bits=final["a_bits"],
            mix_w_bits=mix["w_bits"],
            mix_a_bits=mix["a_bits"],
        )

    def to_json(self) -> str:
        """Readable JSON: one top-level field per line, one block per line."""
        d = self.to_dict()
        blocks = ",\n    ".join(json.dumps(b) for b in d.pop("blocks"))
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()]
        lines.append(f'  "blocks": [\n    {blocks}\n  ]')
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def canonical_json(self) -> str:
        """Compact, key-sorted JSON: equal for equal subnets (used for hashing and metadata)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def short(self) -> str:
        """A one-line form for logs: ``r224 d4,4,3,2,4 | k7e6w444a444 ... | f44``."""
        blocks = " ".join(
            f"k{self.kernel[i]}e{self.expand[i]}w{''.join(map(str, self.w_bits[i]))}"
            f"a{''.join(map(str, self.a_bits[i]))}"
            for i in self.active_blocks()
        )
        first = f"w{''.join(map(str, self.first_w_bits))}a{''.join(map(str, self.first_a_bits))}"
        mix = f" m w{self.mix_w_bits}a{self.mix_a_bits}" if self.search_space.elastic_mix else ""
        return (
            f"r{self.resolution} d{','.join(map(str, self.depths))} | {first} | {blocks} | "
            f"w{self.final_w_bits}a{self.final_a_bits}{mix}"
        )

    def with_uniform_bits(self, w: int, a: int) -> ArchConfig:
        n = len(self.kernel)
        mix = (w, a) if self.search_space.elastic_mix else (self.mix_w_bits, self.mix_a_bits)
        return replace(
            self,
            w_bits=((w,) * CONVS_PER_BLOCK,) * n,
            a_bits=((a,) * CONVS_PER_BLOCK,) * n,
            first_w_bits=(w, w),
            first_a_bits=(a, a),
            final_w_bits=w,
            final_a_bits=a,
            mix_w_bits=mix[0],
            mix_a_bits=mix[1],
        )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def largest(cls, space: str, bits: int | None = None) -> ArchConfig:
        return _extreme(create_space(space), max, bits)

    @classmethod
    def smallest(cls, space: str, bits: int | None = None) -> ArchConfig:
        return _extreme(create_space(space), min, bits)


def _as_tuple(field: str, value: Any) -> tuple:
    if not isinstance(value, list):
        raise QfaError(f"{field} = {value!r} must be a list")
    return tuple(value)


def _extreme(sp: SearchSpace, pick, bits: int | None) -> ArchConfig:
    b = pick(sp.bit_choices) if bits is None else bits
    m = (b if bits is not None else pick(sp.mix_bit_choices)) if sp.elastic_mix else None
    n = sp.num_blocks
    return ArchConfig(
        space=sp.name,
        resolution=pick(sp.resolutions),
        depths=(pick(sp.depth_choices),) * sp.num_stages,
        kernel=(pick(sp.kernel_choices),) * n,
        expand=(pick(sp.expand_choices),) * n,
        w_bits=((b,) * CONVS_PER_BLOCK,) * n,
        a_bits=((b,) * CONVS_PER_BLOCK,) * n,
        first_w_bits=(b, b),
        first_a_bits=(b, b),
        final_w_bits=b,
        final_a_bits=b,
        mix_w_bits=m,
        mix_a_bits=m,
    )


def sample_arch(
    space: str,
    rng: random.Random,
    bit_choices: Sequence[int] | None = None,
    resolutions: Sequence[int] | None = None,
) -> ArchConfig:
    """A uniformly random subnet (each choice drawn independently)."""
    sp = create_space(space)
    bits = tuple(bit_choices or sp.bit_choices)
    n = sp.num_blocks
    triple = lambda: tuple(rng.choice(bits) for _ in range(CONVS_PER_BLOCK))  # noqa: E731
    cfg = ArchConfig(
        space=sp.name,
        resolution=rng.choice(tuple(resolutions or sp.resolutions)),
        depths=tuple(rng.choice(sp.depth_choices) for _ in range(sp.num_stages)),
        kernel=tuple(rng.choice(sp.kernel_choices) for _ in range(n)),
        expand=tuple(rng.choice(sp.expand_choices) for _ in range(n)),
        w_bits=tuple(triple() for _ in range(n)),
        a_bits=tuple(triple() for _ in range(n)),
        first_w_bits=(rng.choice(bits), rng.choice(bits)),
        first_a_bits=(rng.choice(bits), rng.choice(bits)),
        final_w_bits=rng.choice(bits),
        final_a_bits=rng.choice(bits),
        mix_w_bits=max(sp.mix_choices),
        mix_a_bits=max(sp.mix_choices),
    )
    if not sp.elastic_mix:
        return cfg
    # Drawn last, so that spaces without feature-mix bits keep their random streams.
    mix_bits = tuple(b for b in bits if b in sp.mix_bit_choices) or sp.mix_bit_choices
    return replace(cfg, mix_w_bits=rng.choice(mix_bits), mix_a_bits=rng.choice(mix_bits))


def load_arch(path: str | Path, expect_space: str | None = None) -> ArchConfig:
    """Read and validate a cfg.json; every problem is a one-line QfaError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise QfaError(f"{path}: no such arch config") from None
    except UnicodeDecodeError:
        raise QfaError(f"{path}: not a JSON text file (not UTF-8)") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise QfaError(f"{path}: cannot read arch config ({exc.__class__.__name__})") from None
    data = parse_json(text, str(path))  # also refuses NaN, 1e999 and huge integers
    try:
        return ArchConfig.from_dict(data, expect_space=expect_space)
    except QfaError as exc:
        raise QfaError(f"{path}: {exc}") from None


FIELDS = tuple(f.name for f in fields(ArchConfig))
