"""One quantized conv in exact integer form: what the eval-mode PyTorch conv, the folded subnet and
every exported graph compute.

For a conv with input activation quantizer ``(b_a, s, Z, c)`` (``FixedActQuant``: scale, integer
zero point, BatchQuant's real shift; ``qmax = 2^b_a - 1``), LSQ weight step ``d`` at ``b_w`` bits,
BatchNorm ``(gamma, beta, mean, var, eps)`` and conv bias ``b0``::

    q      = clamp(round(clip(x + c, -Z s, (qmax - Z) s) / s) + Z, 0, 255)   uint8 codes
    w_int  = round(clamp(w / d, -2^(b_w-1), 2^(b_w-1) - 1))                int8 on the b_w grid
    acc    = conv(q - Z, w_int)                     zero padding; a sum of products of integers
    y      = act(acc * m[o] + bias[o, row(h), col(w)])

    f[o]   = gamma[o] / sqrt(var[o] + eps)          (1 without BN)
    m[o]   = s * d * f[o]
    bias[o, a, b] = beta[o] + (b0[o] - mean[o]) f[o] - c d f[o] M[o, a, b]

where ``M[o, a, b]`` sums ``w_int[o]`` over the kernel taps that land inside the input for output
positions of border class ``(a, b)``. Why: the trained conv sees ``x_hat = (q - Z) s - c`` inside
the input and 0 in its zero padding, so ``conv(x_hat, w_int d) = s d acc - c d M``. Positions whose
taps all land inside share one class (``M = sum w_int[o]``); only the ring of width ``k // 2`` has
others (at most ``k`` per axis), so the bias is a tiny table gathered by two index vectors, never a
map the size of the feature. Unpadded convs have one class.

Why this form: ``acc`` is exact in float32 whatever order a runtime sums in, as long as every
partial sum stays below 2^24 (``accumulator_bound``); the only roundings left are one multiply and
one add per output, which every IEEE runtime does alike. Conv-then-BN in float, or float weights
scaled by ``d f``, leave each runtime's summation order in the result, and at 2-4 bits one flipped
code early on cascades through the later layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qfa_deploy.nn.functional import ACTIVATIONS, apply_act, crop_to_input
from qfa_deploy.quant import FixedActQuant
from qfa_deploy.quant.lsq import signed_range

__all__ = [
    "CONTAINER_BITS",
    "EXACT_FLOAT32_BOUND",
    "FoldedConv",
    "fold_conv",
    "frozen_array",
    "integer_conv",
    "quantize_codes",
]

CONTAINER_BITS = 8  # uint8 activations, int8 weights
EXACT_FLOAT32_BOUND = 2**24  # every integer of smaller magnitude is a float32


def frozen_array(array: np.ndarray, dtype) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class FoldedConv:
    """One quantized conv in integer form (see the module docstring for the formulas)."""

    name: str  # readable path, e.g. "stage2/block1/expand"
    weight: np.ndarray  # int8 [out, in / groups, k, k], values on the w_bits grid
    w_bits: int
    multiplier: np.ndarray  # float32 [out]: s * d * f
    bias: np.ndarray  # float32 [out, row classes, column classes]
    bias_rows: np.ndarray  # int64 [out height]: each output row's class
    bias_cols: np.ndarray  # int64 [out width]
    stride: int
    padding: int
    groups: int
    act: str  # "none" | "relu" | "hswish"
    act_quant: FixedActQuant  # the quantizer of this conv's input

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {self.act!r}")
        lo, hi = signed_range(self.w_bits)
        if self.weight.size and (self.weight.min() < lo or self.weight.max() > hi):
            raise ValueError(f"{self.name}: integer weights leave the {self.w_bits}-bit grid")

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
    def out_hw(self) -> tuple[int, int]:
        return len(self.bias_rows), len(self.bias_cols)

    @property
    def needs_clip(self) -> bool:
        """Whether the b-bit code range is narrower than the uint8 container."""
        return self.a_bits < CONTAINER_BITS

    @property
    def border_classes(self) -> bool:
        """Whether the bias differs at the border (a padded conv with a non-zero shift)."""
        return self.bias.shape[1:] != (1, 1)

    @property
    def accumulator_bound(self) -> int:
        """The largest ``|acc|`` (or partial sum) any input can produce: below 2^24 it is exact in float32."""
        q = self.act_quant
        per_channel = np.abs(self.weight.astype(np.int64)).reshape(self.out_channels, -1).sum(axis=1)
        return int(per_channel.max(initial=0)) * max(q.zero_point, q.qmax - q.zero_point)

    def clip_range(self) -> tuple[float, float]:
        """``(-Z s, (qmax - Z) s)`` as float32 values."""
        q = self.act_quant
        lo = np.float32(-q.zero_point * q.scale)
        hi = np.float32((q.qmax - q.zero_point) * q.scale)
        return float(lo), float(hi)

    def bias_map(self) -> torch.Tensor:
        """The bias per output position, ``[out, H, W]`` (``[out, 1, 1]`` without border classes)."""
        table = torch.tensor(self.bias)
        if not self.border_classes:
            return table
        return table[:, torch.tensor(self.bias_rows)][:, :, torch.tensor(self.bias_cols)]


def _tap_classes(size: int, k: int, stride: int, pad: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The distinct ``[first, last)`` ranges of kernel taps inside the input, and each output's index."""
    out = (size + 2 * pad - k) // stride + 1
    spans = [(max(0, pad - o * stride), min(k, size + pad - o * stride)) for o in range(out)]
    classes = sorted(set(spans))
    return classes, np.array([classes.index(s) for s in spans], dtype=np.int64)


@torch.no_grad()
def fold_conv(conv, in_channels: int, in_hw: tuple[int, int], name: str = "") -> FoldedConv:
    """The integer form of a ``QuantConv`` (static or elastic, its active choice) in eval mode, for an
    input of ``in_channels`` x ``in_hw``."""
    if conv.weight_quant.bits is None or conv.act_quant.bits is None:
        raise ValueError(f"{name or 'conv'}: fold needs a quantized conv (got full precision)")
    if conv.training:
        raise ValueError(f"{name or 'conv'}: fold needs an eval-mode, calibrated conv (call .eval())")
    weight = conv.active_weight(in_channels).detach()
    out_ch, k = weight.shape[0], weight.shape[-1]
    w_int = conv.weight_quant.integer(weight).double()
    step = float(conv.weight_quant.active_step())
    b0 = conv.active_bias(out_ch)
    b0 = torch.zeros(out_ch, dtype=torch.float64) if b0 is None else b0.detach().double()
    if conv.bn is not None:
        bn = conv.bn
        factor = bn.weight[:out_ch].double() / torch.sqrt(bn.running_var[:out_ch].double() + bn.eps)
        bias0 = bn.bias[:out_ch].double() + (b0 - bn.running_mean[:out_ch].double()) * factor
    else:
        factor, bias0 = torch.ones(out_ch, dtype=torch.float64), b0
    q = conv.act_quant.fixed()
    padding = k // 2
    rows, row_of = _tap_classes(in_hw[0], k, conv.stride, padding)
    cols, col_of = _tap_classes(in_hw[1], k, conv.stride, padding)
    if q.shift == 0.0 or (len(rows) == 1 and len(cols) == 1):  # one class: no border term, or no border
        rows, cols = rows[:1], cols[:1]
        row_of, col_of = np.zeros_like(row_of), np.zeros_like(col_of)
    taps = w_int.sum(dim=1)  # [out, k, k]: summed over input channels (exact in float64)
    inside = torch.stack(
        [torch.stack([taps[:, r0:r1, c0:c1].sum(dim=(1, 2)) for c0, c1 in cols], dim=-1) for r0, r1 in rows], dim=-2
    )  # M: [out, row classes, column classes]
    bias = bias0[:, None, None] - q.shift * step * factor[:, None, None] * inside
    return FoldedConv(
        name=name,
        weight=frozen_array(w_int.numpy(), np.int8),
        w_bits=conv.weight_quant.bits,
        multiplier=frozen_array((q.scale * step * factor).float().numpy(), np.float32),
        bias=frozen_array(bias.float().numpy(), np.float32),
        bias_rows=frozen_array(row_of, np.int64),
        bias_cols=frozen_array(col_of, np.int64),
        stride=conv.stride,
        padding=padding,
        groups=in_channels if conv.depthwise else 1,
        act=conv.act,
        act_quant=q,
    )


def quantize_codes(x: torch.Tensor, conv: FoldedConv) -> torch.Tensor:
    """The codes of ``conv``'s input quantizer (shift, clip, QuantizeLinear), as a float tensor."""
    q = conv.act_quant
    if q.shift != 0.0:
        x = x + torch.tensor(q.shift, dtype=torch.float32)
    if conv.needs_clip:
        lo, hi = conv.clip_range()
        x = torch.clamp(x, lo, hi)
    scale = torch.tensor(q.scale, dtype=torch.float32)
    return torch.clamp(torch.round(x / scale) + q.zero_point, 0, 2**CONTAINER_BITS - 1)


def integer_conv(x: torch.Tensor, conv: FoldedConv, codes: dict | None = None) -> torch.Tensor:
    """``conv`` on float NCHW input ``x``; with ``codes``, records the uint8 input codes under its name."""
    q = quantize_codes(x, conv)
    if codes is not None:
        codes[conv.name] = q.to(torch.uint8)
    weight, padding = crop_to_input(torch.tensor(conv.weight, dtype=torch.float32), x.shape[-1])
    acc = F.conv2d(q - conv.act_quant.zero_point, weight, None, conv.stride, padding, 1, conv.groups)
    y = acc * torch.tensor(conv.multiplier).view(-1, 1, 1) + conv.bias_map()
    return apply_act(y, conv.act)
