"""Search spaces: the fixed skeleton and the elastic choices of a MobileNetV3-style supernet.

A space is a frozen value object registered by name; every ArchConfig names its space, and a
checkpoint records the space it was trained on. ``create_space(name)`` is the only way in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qfa_deploy.errors import QfaError

__all__ = ["SearchSpace", "StageSpec", "create_space", "list_spaces", "register_space", "spatial_sizes"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: up to ``max_depth`` MBConv blocks sharing width, stride (first block),
    activation and squeeze-excite."""

    width: int
    stride: int
    act: str  # "relu" | "hswish"
    use_se: bool


@dataclass(frozen=True)
class SearchSpace:
    """The skeleton of an OFA MobileNetV3 supernet and the choices each subnet makes in it."""

    name: str
    num_classes: int
    resolutions: tuple[int, ...]
    stem_width: int
    stem_stride: int
    stages: tuple[StageSpec, ...]
    final_expand_width: int
    feature_mix_width: int
    kernel_choices: tuple[int, ...] = (3, 5, 7)
    expand_choices: tuple[int, ...] = (3, 4, 6)
    depth_choices: tuple[int, ...] = (2, 3, 4)
    bit_choices: tuple[int, ...] = (2, 3, 4)
    fixed_bits: int = 8  # stem conv and classifier (and the feature-mix conv without mix_bit_choices)
    # Bit choices of the feature-mix conv (weights and activations); empty: fixed at ``fixed_bits``.
    # The seed quantizes it with 2-4 bits like every block conv; the CIFAR-10 preset keeps it at 8.
    mix_bit_choices: tuple[int, ...] = ()
    # Version 2 added the feature-mix bits to ``qfa-mbv3-w1.2`` (its configs name them).
    version: int = 1
    # One BatchQuant running range per bit choice (the seed's layout, one observer per bit) instead of
    # one per quantizer; only the supernet's state-dict layout depends on it, not the configs.
    per_bit_act_ranges: bool = False
    dropout: float = 0.1
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)

    @property
    def num_blocks(self) -> int:
        """Elastic blocks (the fixed first block is not counted)."""
        return self.num_stages * self.max_depth

    @property
    def max_resolution(self) -> int:
        return max(self.resolutions)

    @property
    def elastic_mix(self) -> bool:
        """Whether each subnet chooses the feature-mix conv's bits."""
        return bool(self.mix_bit_choices)

    @property
    def mix_choices(self) -> tuple[int, ...]:
        return self.mix_bit_choices or (self.fixed_bits,)

    def block_stage(self, block: int) -> int:
        return block // self.max_depth

    def describe(self) -> dict:
        """The space's choices as plain data (what ``qfa-deploy info --space`` prints)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "resolutions": list(self.resolutions),
            "stages": [
                {"width": s.width, "stride": s.stride, "act": s.act, "se": s.use_se}
                for s in self.stages
            ],
            "stem": {"width": self.stem_width, "stride": self.stem_stride, "bits": self.fixed_bits},
            "final_expand_width": self.final_expand_width,
            "feature_mix_width": self.feature_mix_width,
            "kernel_choices": list(self.kernel_choices),
            "expand_choices": list(self.expand_choices),
            "depth_choices": list(self.depth_choices),
            "bit_choices": list(self.bit_choices),
            "feature_mix_bit_choices": list(self.mix_choices),
            "version": self.version,
            "num_subnets": self.num_subnets(),
            "log10_num_subnets": round(math.log10(self.num_subnets()), 2),
        }

    def num_subnets(self) -> int:
        """Distinct quantized subnets (canonical configs), counted exactly."""
        bits_per_conv = len(self.bit_choices) ** 2  # (weight, activation)
        per_block = len(self.kernel_choices) * len(self.expand_choices) * bits_per_conv**3
        per_stage = sum(per_block**d for d in self.depth_choices)
        first_block = bits_per_conv**2
        final_expand = bits_per_conv
        feature_mix = len(self.mix_choices) ** 2
        return len(self.resolutions) * first_block * final_expand * feature_mix * per_stage**self.num_stages


def _down(size: int, stride: int) -> int:
    return -(-size // stride)  # same-padded conv: ceil(size / stride)


def spatial_sizes(space: SearchSpace, resolution: int) -> tuple[int, list[int], int]:
    """(stem input, input size of each of the space's blocks at full depth, head input)."""
    size = _down(resolution, space.stem_stride)
    sizes = []
    for b in range(space.num_blocks):
        sizes.append(size)
        stage, j = divmod(b, space.max_depth)
        size = _down(size, space.stages[stage].stride if j == 0 else 1)  # only a stage's first block strides
    return resolution, sizes, size


_REGISTRY: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    if space.name in _REGISTRY:
        raise ValueError(f"space {space.name!r} registered twice")
    _REGISTRY[space.name] = space
    return space


def list_spaces() -> list[str]:
    return sorted(_REGISTRY)


def create_space(name: str) -> SearchSpace:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QfaError(f"unknown space {name!r} (known: {', '.join(list_spaces())})") from None


def _ofa_mbv3(width_mult: float) -> dict:
    base = [16, 24, 40, 80, 112, 160]
    acts = ["relu", "relu", "hswish", "hswish", "hswish"]
    ses = [False, True, False, True, True]
    strides = [2, 2, 2, 1, 2]
    widths = [make_divisible(b * width_mult) for b in base]
    return {
        "stem_width": widths[0],
        "stages": tuple(
            StageSpec(w, s, a, se) for w, s, a, se in zip(widths[1:], strides, acts, ses, strict=True)
        ),
        "final_expand_width": make_divisible(960 * width_mult),
        "feature_mix_width": make_divisible(1280 * width_mult),
    }


# The paper's ImageNet space (OFA MobileNetV3, width 1.2), with every degree of freedom of the
# seed's 176-integer gene (feature-mix bits included: version 2).
register_space(
    SearchSpace(
        name="qfa-mbv3-w1.2",
        num_classes=1000,
        resolutions=tuple(range(128, 225, 4)),
        stem_stride=2,
        mix_bit_choices=(2, 3, 4),
        version=2,
        per_bit_act_ranges=True,
        **_ofa_mbv3(1.2),
    )
)

# CIFAR-10 preset: the same structure adapted to 32 px and slimmed so that a supernet trains on 2 CPU
# cores. The stem downsamples once (32 -> 16 -> 16 -> 8 -> 4 -> 4 -> 2, the ImageNet space's total
# stride of 16 after the stem); widths are OFA MobileNetV3's at 0.5x-0.7x. Measured on this 2-core
# x86 (channels-last, batch 128, quantized fwd+bwd): largest subnet ~40 img/s, smallest ~320 img/s.
register_space(
    SearchSpace(
        name="qfa-mbv3-cifar10",
        num_classes=10,
        resolutions=(24, 28, 32),
        stem_width=16,
        stem_stride=2,
        stages=(
            StageSpec(16, 1, "relu", False),
            StageSpec(24, 2, "relu", True),
            StageSpec(40, 2, "hswish", False),
            StageSpec(56, 1, "hswish", True),
            StageSpec(80, 2, "hswish", True),
        ),
        final_expand_width=480,
        feature_mix_width=640,
        dropout=0.1,
        image_mean=(0.4913, 0.4821, 0.4465),
        image_std=(0.2452, 0.2428, 0.2606),
    )
)
