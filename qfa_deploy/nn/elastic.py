"""Elastic layers: one set of maximal weights serving every kernel size, width and bitwidth.

Weight sharing rules (as in Once-for-All):
- width: the first ``c`` output channels (and, for the next layer, the first ``c`` input channels);
  BN parameters and statistics are sliced the same way;
- kernel: the centre ``k x k`` of the next larger kernel, passed through a learned ``k^2 x k^2``
  transform (initialised to identity) shared by all channels of the layer: 7 -> 5 -> 3;
- bits: each quantizer keeps its learned parameters per bit choice (see ``qfa_deploy.quant``);
- quantizers and kernel size: a depthwise conv with several kernel sizes keeps one weight and one
  input quantizer per kernel size (``per_kernel``), as the seed does: the 3x3 centre of a 7x7 kernel,
  once transformed, has its own weight distribution and step. ``weight_quant``/``act_quant`` name
  the active kernel's. A state dict of the former layout (one shared pair) loads into every size.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qfa_deploy.nn.layers import QuantConv, SqueezeExcite
from qfa_deploy.space import make_divisible

__all__ = ["ElasticBatchNorm2d", "ElasticQuantConv", "ElasticSqueezeExcite", "KernelQuant"]


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its maximal parameters and statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            factor,
            self.eps,
        )


class ElasticQuantConv(QuantConv):
    """A QuantConv whose kernel size, output width and bits are chosen per subnet."""

    def __init__(self, *args, kernel_choices: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_choices = tuple(sorted(kernel_choices or (self.kernel_size,)))
        self.active_kernel = self.kernel_size
        self.active_out = self.out_channels
        # transforms["5"] maps the centre 5x5 of the 7x7 kernel to the 5x5 kernel, and so on.
        self.transforms = nn.ParameterDict(
            {str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernel_choices[:-1]}
        )
        if self.depthwise and len(self.kernel_choices) > 1:
            shared_w, shared_a = self._modules.pop("weight_quant"), self._modules.pop("act_quant")
            self.per_kernel = nn.ModuleDict(
                {str(k): KernelQuant(copy.deepcopy(shared_w), copy.deepcopy(shared_a)) for k in self.kernel_choices}
            )

    # The active kernel's quantizers where there is one pair per kernel size, else the conv's own.
    @property
    def weight_quant(self) -> nn.Module:
        per_kernel = self._modules.get("per_kernel")
        return self._modules["weight_quant"] if per_kernel is None else per_kernel[str(self.active_kernel)].weight_quant

    @property
    def act_quant(self) -> nn.Module:
        per_kernel = self._modules.get("per_kernel")
        return self._modules["act_quant"] if per_kernel is None else per_kernel[str(self.active_kernel)].act_quant

    def quantizer_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Every (weight, input) quantizer pair of the conv, active or not."""
        per_kernel = self._modules.get("per_kernel")
        if per_kernel is None:
            return [(self.weight_quant, self.act_quant)]
        return [(kq.weight_quant, kq.act_quant) for kq in per_kernel.values()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The former layout (one pair shared by every kernel size) becomes a copy per kernel size:
        # every subnet then computes exactly what it computed before.
        if "per_kernel" in self._modules:
            for kind in ("weight_quant", "act_quant"):
                old = f"{prefix}{kind}."
                for key in [k for k in state_dict if k.startswith(old)]:
                    value = state_dict.pop(key)
                    for k in self.per_kernel:
                        state_dict.setdefault(f"{prefix}per_kernel.{k}.{kind}.{key[len(old):]}", value.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def make_bn(channels: int) -> nn.BatchNorm2d:
        return ElasticBatchNorm2d(channels)

    def set_active(self, out_channels: int, kernel: int, w_bits: int | None, a_bits: int | None) -> None:
        self.active_out, self.active_kernel = out_channels, kernel  # the kernel first: it picks the quantizers
        self.weight_quant.bits, self.act_quant.bits = w_bits, a_bits

    def active_kernel_size(self) -> int:
        return self.active_kernel

    def active_weight(self, in_channels: int) -> torch.Tensor:
        w_in = 1 if self.depthwise else in_channels
        out = self.active_out if not self.depthwise else in_channels
        weight = self.weight[:out, :w_in]
        k = self.kernel_size
        for smaller in reversed(self.kernel_choices):
            if smaller >= k:
                continue
            if smaller < self.active_kernel:
                break
            lo = (k - smaller) // 2
            centre = weight[:, :, lo : lo + smaller, lo : lo + smaller]
            flat = centre.reshape(-1, smaller * smaller) @ self.transforms[str(smaller)]
            weight, k = flat.reshape(centre.shape), smaller
        return weight

    def active_bias(self, out_channels: int) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[:out_channels]


class KernelQuant(nn.Module):
    """The weight and input quantizers a depthwise conv uses at one kernel size."""

    def __init__(self, weight_quant: nn.Module, act_quant: nn.Module) -> None:
        super().__init__()
        self.weight_quant = weight_quant
        self.act_quant = act_quant


class ElasticSqueezeExcite(SqueezeExcite):
    """SE whose width follows its input; the reduced width is ``make_divisible(C / 4)``."""

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        r = make_divisible(c // 4)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, self.reduce.weight[:r, :c], self.reduce.bias[:r]))
        return F.hardsigmoid(F.conv2d(y, self.expand.weight[:c, :r], self.expand.bias[:c]))
