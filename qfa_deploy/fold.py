"""fold: a calibrated static subnet as fixed integer weights, per-channel scales and constants.

The folded form is what every exporter reads (no exporter looks at the PyTorch modules). For each
quantized conv, with input activation quantizer ``(b_a, s, Z, c)`` (``FixedActQuant``: scale,
integer zero point, real shift; ``qmax_a = 2^b_a - 1``), LSQ weight step ``d`` at ``b_w`` bits,
BatchNorm ``(gamma, beta, mean, var, eps)`` and conv bias ``b0``::

    w_int    = round(clamp(w / d, -2^(b_w-1), 2^(b_w-1) - 1))      int8, on the b_w-bit grid
    f        = gamma / sqrt(var + eps)                              (f = 1 without BN)
    scale[o] = d * f[o]                                             per output channel
    bias[o]  = beta[o] + (b0[o] - mean[o]) * f[o]                   (b0 without BN)

and the layer computes (Clip only where ``b_a`` is narrower than the 8-bit container)::

    q     = round(clip(x + c, -Z s, (qmax_a - Z) s) / s) + Z        uint8 codes in [0, qmax_a]
    x_hat = (q - Z) s - c
    y     = act(conv(x_hat, w_int * scale[o]) + bias[o])

BatchNorm goes into the per-channel scale, never into the weights, so the weights stay on their
grid. BatchQuant's real-valued offset is folded exactly as the integer zero point ``Z`` plus the
constant shift ``c`` (see ``qfa_deploy.quant.batchquant``), never rounded away. For a conv without
padding (the 1x1 convs and the head) the post-dequantize ``- c`` can also go into the bias exactly::

    conv(x_hat - c, W)[o] = conv(x_hat, W)[o] - c * scale[o] * sum(w_int[o])
    =>  bias'[o] = bias[o] - c * scale[o] * sum(w_int[o])           (``shift_in_bias``)

(with zero padding the border would see ``0`` instead of ``-c``, so padded convs keep the explicit
subtraction). Squeeze-excite stays in float. ``folded_forward`` runs the folded form in PyTorch
with the same operations, in the same order, as the exported QDQ graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qfa_deploy.arch import ArchConfig
from qfa_deploy.nn.layers import ACTIVATIONS, QuantConv, SqueezeExcite, apply_act
from qfa_deploy.nn.mbconv import MBConv
from qfa_deploy.quant import FixedActQuant
from qfa_deploy.quant.lsq import signed_range

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

CONTAINER_BITS = 8  # uint8 activations, int8 weights


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class FoldedConv:
    """One quantized conv in integer form (see the module docstring for the formulas)."""

    name: str  # readable path, e.g. "stage2/block1/expand"
    weight: np.ndarray  # int8 [out, in / groups, k, k], values on the w_bits grid
    w_bits: int
    scale: np.ndarray  # float32 [out]: LSQ step * BN factor
    bias: np.ndarray  # float32 [out]
    stride: int
    padding: int
    groups: int
    act: str  # "none" | "relu" | "hswish"
    act_quant: FixedActQuant  # the quantizer of this conv's input
    shift_in_bias: bool = False  # the post-dequantize "- c" is already in ``bias``

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {self.act!r}")
        lo, hi = signed_range(self.w_bits)
        if self.weight.size and (self.weight.min() < lo or self.weight.max() > hi):
            raise ValueError(f"{self.name}: integer weights leave the {self.w_bits}-bit grid")
        if self.shift_in_bias and self.padding != 0:
            raise ValueError(f"{self.name}: the input shift can only go into the bias of an unpadded conv")

    @property
    def a_bits(self) -> int:
        return self.act_quant.bits

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[-1]

    @property
    def needs_clip(self) -> bool:
        """Whether the b-bit code range is narrower than the uint8 container."""
        return self.a_bits < CONTAINER_BITS

    def clip_range(self) -> tuple[float, float]:
        """``(-Z s, (qmax - Z) s)`` as float32 values (the bounds PyTorch's eval clamp uses)."""
        q = self.act_quant
        lo = np.float32(-q.zero_point * q.scale)
        hi = np.float32((q.qmax - q.zero_point) * q.scale)
        return float(lo), float(hi)

    def dequantized_weight(self) -> np.ndarray:
        """``w_int * scale[o]`` in float32, as DequantizeLinear computes it."""
        return self.weight.astype(np.float32) * self.scale[:, None, None, None]


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


@torch.no_grad()
def _fold_conv(conv: QuantConv, name: str, fold_shift: bool) -> FoldedConv:
    if conv.weight_quant.bits is None or conv.act_quant.bits is None:
        raise ValueError(f"{name}: fold needs a quantized conv (got full precision)")
    if conv.training:
        raise ValueError(f"{name}: fold needs an eval-mode, calibrated subnet (call .eval())")
    w_int = conv.weight_quant.integer(conv.weight.detach()).double()
    step = float(conv.weight_quant.active_step())
    out_ch = w_int.shape[0]
    b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros(out_ch, dtype=torch.float64)
    if conv.bn is not None:
        bn = conv.bn
        factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() + (b0 - bn.running_mean.double()) * factor
    else:
        factor = torch.ones(out_ch, dtype=torch.float64)
        bias = b0
    scale32 = (step * factor).float()
    act_quant = conv.act_quant.fixed()
    k = conv.kernel_size
    padding = k // 2
    shift_in_bias = fold_shift and padding == 0 and act_quant.shift != 0.0
    if shift_in_bias:
        bias = bias - act_quant.shift * scale32.double() * w_int.sum(dim=(1, 2, 3))
    return FoldedConv(
        name=name,
        weight=_frozen(w_int.numpy(), np.int8),
        w_bits=conv.weight_quant.bits,
        scale=_frozen(scale32.numpy(), np.float32),
        bias=_frozen(bias.float().numpy(), np.float32),
        stride=conv.stride,
        padding=padding,
        groups=conv.in_channels if conv.depthwise else 1,
        act=conv.act,
        act_quant=act_quant,
        shift_in_bias=shift_in_bias,
    )


def _fold_se(se: SqueezeExcite, name: str) -> FoldedSE:
    arr = lambda t: _frozen(t.detach().numpy(), np.float32)  # noqa: E731
    return FoldedSE(
        name=name,
        reduce_weight=arr(se.reduce.weight),
        reduce_bias=arr(se.reduce.bias),
        expand_weight=arr(se.expand.weight),
        expand_bias=arr(se.expand.bias),
    )


def _fold_block(block: MBConv, name: str, fold_shift: bool) -> FoldedBlock:
    if block.se is not None and type(block.se) is not SqueezeExcite:
        raise ValueError(f"{name}: fold reads a static subnet (got {type(block.se).__name__})")
    return FoldedBlock(
        name=name,
        expand=None if block.expand is None else _fold_conv(block.expand, f"{name}/expand", fold_shift),
        depthwise=_fold_conv(block.depthwise, f"{name}/depthwise", fold_shift),
        se=None if block.se is None else _fold_se(block.se, f"{name}/se"),
        project=_fold_conv(block.project, f"{name}/project", fold_shift),
        residual=block.residual,
    )


def block_names(arch: ArchConfig) -> list[str]:
    """``stage{s}/block{j}`` (0-based) for the running elastic blocks of ``arch``, in order."""
    depth = arch.search_space.max_depth
    return [f"stage{i // depth}/block{i % depth}" for i in arch.active_blocks()]


def fold(subnet, fold_shift_into_bias: bool = True) -> FoldedSubnet:
    """Fold an extracted, calibrated ``StaticSubnet`` in eval mode.

    Args:
        subnet: from ``qfa_deploy.extract.extract`` (or ``evaluate.calibrated_subnet``), in eval
            mode; it is only read.
        fold_shift_into_bias: put the post-dequantize shift of unpadded convs into their bias
            (exact; padded convs always keep it explicit).
    """
    if subnet.training:
        raise ValueError("fold needs an eval-mode, calibrated subnet (call .eval())")
    arch: ArchConfig = subnet.arch
    names = block_names(arch)
    blocks = list(subnet.blocks)
    if len(blocks) != len(names):
        raise ValueError(f"subnet runs {len(blocks)} blocks but its arch has {len(names)}")
    fs = fold_shift_into_bias
    return FoldedSubnet(
        arch=arch,
        stem=_fold_conv(subnet.stem, "stem", fs),
        blocks=(
            _fold_block(subnet.first_block, "first_block", fs),
            *(_fold_block(b, n, fs) for b, n in zip(blocks, names, strict=True)),
        ),
        final_expand=_fold_conv(subnet.final_expand, "final_expand", fs),
        feature_mix=_fold_conv(subnet.feature_mix, "feature_mix", fs),
        classifier=_fold_conv(subnet.classifier, "classifier", fs),
    )


# -- running the folded form -----------------------------------------------------------------


def quantize_codes(x: torch.Tensor, conv: FoldedConv) -> torch.Tensor:
    """The integer codes of ``conv``'s input quantizer: shift, clip, QuantizeLinear (float tensor)."""
    q = conv.act_quant
    if q.shift != 0.0:
        x = x + torch.tensor(q.shift, dtype=torch.float32)
    if conv.needs_clip:
        lo, hi = conv.clip_range()
        x = torch.clamp(x, lo, hi)
    scale = torch.tensor(q.scale, dtype=torch.float32)
    return torch.clamp(torch.round(x / scale) + q.zero_point, 0, 2**CONTAINER_BITS - 1)


def _conv(x: torch.Tensor, conv: FoldedConv, codes: dict | None) -> torch.Tensor:
    q = conv.act_quant
    codes_t = quantize_codes(x, conv)
    if codes is not None:
        codes[conv.name] = codes_t.to(torch.uint8)
    x_hat = (codes_t - q.zero_point) * torch.tensor(q.scale, dtype=torch.float32)
    if q.shift != 0.0 and not conv.shift_in_bias:
        x_hat = x_hat - torch.tensor(q.shift, dtype=torch.float32)
    weight = torch.from_numpy(conv.dequantized_weight())
    bias = torch.from_numpy(conv.bias.copy()).view(-1, 1, 1)
    y = F.conv2d(x_hat, weight, None, conv.stride, conv.padding, 1, conv.groups) + bias
    return apply_act(y, conv.act)


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
    x = _conv(x.float(), folded.stem, codes)
    for block in folded.blocks:
        y = x if block.expand is None else _conv(x, block.expand, codes)
        y = _conv(y, block.depthwise, codes)
        if block.se is not None:
            y = _se(y, block.se)
        y = _conv(y, block.project, codes)
        x = x + y if block.residual else y
    x = _conv(x, folded.final_expand, codes)
    x = _conv(x.mean((2, 3), keepdim=True), folded.feature_mix, codes)
    logits = _conv(x, folded.classifier, codes).flatten(1)
    return (logits, codes) if return_codes else logits
