"""fold: a calibrated static subnet as fixed integer weights, per-channel multipliers and bias tables.

The folded form is what every exporter reads (no exporter looks at the PyTorch modules). Each
quantized conv becomes a ``FoldedConv`` (``qfa_deploy.nn.integer_conv``, whose docstring gives the
formulas): int8 weights on their b-bit grid, the input quantizer's fixed ``(s, Z, c)``, and an
epilogue ``acc * m[o] + bias[o, row(h), col(w)]`` applied to the exact integer accumulator
``acc = conv(q - Z, w_int)``. BatchNorm goes into ``m`` and the bias, never into the weights, so the
weights stay on their grid. BatchQuant's real-valued offset is folded exactly: the integer zero
point ``Z`` plus the constant shift ``c``, added before quantisation and, after the conv, a bias
term ``-c d f M`` that depends on which kernel taps meet the zero padding (border classes), never
rounded away. Squeeze-excite stays in float. ``folded_forward`` runs the folded form in PyTorch
with the same operations, in the same order, as the exported QDQ graph; the eval-mode PyTorch
subnet runs the same ``integer_conv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qfa_deploy.arch import ArchConfig
from qfa_deploy.nn.integer_conv import EXACT_FLOAT32_BOUND, FoldedConv, frozen_array, integer_conv, quantize_codes
from qfa_deploy.nn.layers import QuantConv, SqueezeExcite
from qfa_deploy.nn.mbconv import MBConv

__all__ = [
    "FoldedBlock",
    "FoldedConv",
    "FoldedSE",
    "FoldedSubnet",
    "block_names",
    "fold",
    "folded_forward",
    "quantize_codes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FoldedSE:
    """Squeeze-excite, float: pool -> 1x1 -> ReLU -> 1x1 -> hard-sigmoid -> scale the input."""

    name: str
    reduce_weight: np.ndarray  # float32 [r, c, 1, 1]
    reduce_bias: np.ndarray  # float32 [r]
    expand_weight: np.ndarray  # float32 [c, r, 1, 1]
    expand_bias: np.ndarray  # float32 [c]


@dataclass(frozen=True, eq=False)
class FoldedBlock:
    """An MBConv block: [expand] -> depthwise -> [SE] -> project (+ identity)."""

    name: str
    expand: FoldedConv | None
    depthwise: FoldedConv
    se: FoldedSE | None
    project: FoldedConv
    residual: bool

    def convs(self) -> list[FoldedConv]:
        return [c for c in (self.expand, self.depthwise, self.project) if c is not None]


@dataclass(frozen=True, eq=False)
class FoldedSubnet:
    """stem -> blocks (the first block included) -> final expand -> pool -> feature mix -> classifier."""

    arch: ArchConfig
    stem: FoldedConv
    blocks: tuple[FoldedBlock, ...]
    final_expand: FoldedConv
    feature_mix: FoldedConv
    classifier: FoldedConv

    @property
    def resolution(self) -> int:
        return self.arch.resolution

    def convs(self) -> list[FoldedConv]:
        """Every quantized conv in execution order."""
        out = [self.stem]
        for block in self.blocks:
            out += block.convs()
        return out + [self.final_expand, self.feature_mix, self.classifier]

    def bits_summary(self) -> dict:
        """Per-conv ``"w4a3"`` strings and histograms of the weight and activation bits."""
        convs = self.convs()
        hist = lambda bits: {str(b): bits.count(b) for b in sorted(set(bits))}  # noqa: E731
        return {
            "convs": len(convs),
            "w_bits": hist([c.w_bits for c in convs]),
            "a_bits": hist([c.a_bits for c in convs]),
            "per_conv": {c.name: f"w{c.w_bits}a{c.a_bits}" for c in convs},
        }


# -- folding ---------------------------------------------------------------------------------


def _fold_conv(conv: QuantConv, name: str, in_hw: tuple[int, int]) -> FoldedConv:
    return conv.folded(conv.in_channels, in_hw, name)


def _fold_se(se: SqueezeExcite, name: str) -> FoldedSE:
    arr = lambda t: frozen_array(t.detach().numpy(), np.float32)  # noqa: E731
    return FoldedSE(
        name=name,
        reduce_weight=arr(se.reduce.weight),
        reduce_bias=arr(se.reduce.bias),
        expand_weight=arr(se.expand.weight),
        expand_bias=arr(se.expand.bias),
    )


def _fold_block(block: MBConv, name: str, in_hw: tuple[int, int]) -> FoldedBlock:
    if block.se is not None and type(block.se) is not SqueezeExcite:
        raise ValueError(f"{name}: fold reads a static subnet (got {type(block.se).__name__})")
    expand = None if block.expand is None else _fold_conv(block.expand, f"{name}/expand", in_hw)
    depthwise = _fold_conv(block.depthwise, f"{name}/depthwise", in_hw)
    return FoldedBlock(
        name=name,
        expand=expand,
        depthwise=depthwise,
        se=None if block.se is None else _fold_se(block.se, f"{name}/se"),
        project=_fold_conv(block.project, f"{name}/project", depthwise.out_hw),
        residual=block.residual,
    )


def block_names(arch: ArchConfig) -> list[str]:
    """``stage{s}/block{j}`` (0-based) for the running elastic blocks of ``arch``, in order."""
    depth = arch.search_space.max_depth
    return [f"stage{i // depth}/block{i % depth}" for i in arch.active_blocks()]


def fold(subnet) -> FoldedSubnet:
    """Fold an extracted, calibrated ``StaticSubnet`` in eval mode.

    Args:
        subnet: from ``qfa_deploy.extract.extract`` (or ``evaluate.calibrated_subnet``), in eval
            mode; it is only read.
    """
    if subnet.training:
        raise ValueError("fold needs an eval-mode, calibrated subnet (call .eval())")
    arch: ArchConfig = subnet.arch
    names = block_names(arch)
    blocks = list(subnet.blocks)
    if len(blocks) != len(names):
        raise ValueError(f"subnet runs {len(blocks)} blocks but its arch has {len(names)}")
    stem = _fold_conv(subnet.stem, "stem", (arch.resolution, arch.resolution))
    folded_blocks = [_fold_block(subnet.first_block, "first_block", stem.out_hw)]
    for block, name in zip(blocks, names, strict=True):
        folded_blocks.append(_fold_block(block, name, folded_blocks[-1].project.out_hw))
    final_expand = _fold_conv(subnet.final_expand, "final_expand", folded_blocks[-1].project.out_hw)
    folded = FoldedSubnet(
        arch=arch,
        stem=stem,
        blocks=tuple(folded_blocks),
        final_expand=final_expand,
        feature_mix=_fold_conv(subnet.feature_mix, "feature_mix", (1, 1)),  # after the global pool
        classifier=_fold_conv(subnet.classifier, "classifier", (1, 1)),
    )
    loose = [c.name for c in folded.convs() if c.accumulator_bound >= EXACT_FLOAT32_BOUND]
    if loose:  # still correct, but runtimes may then round their sums differently
        log.warning("accumulators of %s may exceed 2^24: not exact in float32", ", ".join(loose))
    return folded


# -- running the folded form -----------------------------------------------------------------


def _se(x: torch.Tensor, se: FoldedSE) -> torch.Tensor:
    t = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    y = x.mean((2, 3), keepdim=True)
    y = F.relu(F.conv2d(y, t(se.reduce_weight), t(se.reduce_bias)))
    return x * F.hardsigmoid(F.conv2d(y, t(se.expand_weight), t(se.expand_bias)))


@torch.no_grad()
def folded_forward(
    folded: FoldedSubnet, x: torch.Tensor, return_codes: bool = False
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the folded form on float NCHW images at ``folded.resolution``.

    Returns the logits ``[N, classes]``; with ``return_codes``, also the uint8 codes of every
    activation quantizer, keyed by conv name.
    """
    codes: dict[str, torch.Tensor] | None = {} if return_codes else None
    x = integer_conv(x.float(), folded.stem, codes)
    for block in folded.blocks:
        y = x if block.expand is None else integer_conv(x, block.expand, codes)
        y = integer_conv(y, block.depthwise, codes)
        if block.se is not None:
            y = _se(y, block.se)
        y = integer_conv(y, block.project, codes)
        x = x + y if block.residual else y
    x = integer_conv(x, folded.final_expand, codes)
    x = integer_conv(x.mean((2, 3), keepdim=True), folded.feature_mix, codes)
    logits = integer_conv(x, folded.classifier, codes).flatten(1)
    return (logits, codes) if return_codes else logits
