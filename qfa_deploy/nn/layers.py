"""Static quantized layers: a conv with its input (activation) and weight quantizers, BN, activation.

A ``QuantConv`` quantizes its *input* with BatchQuant at the conv's activation bits, its weight with
LSQ at the conv's weight bits, then runs conv -> BN -> activation (training: fake quantization in
float, with gradients). In eval mode a quantized conv runs its exact integer form instead
(``qfa_deploy.nn.integer_conv``): the same arithmetic as the folded subnet and the exported graphs,
so the PyTorch reference and the deployments agree bit for bit on the convolutions. The elastic supernet subclasses it
(``ElasticQuantConv``) and only changes where the weight comes from, so the static subnets that
``extract`` returns run the very same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qfa_deploy.nn.functional import ACTIVATIONS, apply_act, crop_to_input
from qfa_deploy.nn.integer_conv import FoldedConv, fold_conv, integer_conv
from qfa_deploy.quant import LSQ, BatchQuant

__all__ = ["ACTIVATIONS", "QuantConv", "SqueezeExcite", "apply_act"]


class QuantConv(nn.Module):
    """Quantized conv (optionally depthwise) with optional BN, bias and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        depthwise: bool = False,
        act: str = "none",
        use_bn: bool = True,
        use_bias: bool = False,
        w_bit_choices: tuple[int, ...] = (8,),
        a_bit_choices: tuple[int, ...] = (8,),
        act_quant_cls: type = BatchQuant,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.depthwise, self.act = kernel_size, stride, depthwise, act
        w_in = 1 if depthwise else in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, w_in, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if use_bias else None
        self.bn = self.make_bn(out_channels) if use_bn else None
        self.act_quant = act_quant_cls(a_bit_choices)
        self.weight_quant = LSQ(w_bit_choices)
        self.weight_quant.init_steps(self.weight)
        self._fold_cache: tuple | None = None  # (key, what keeps the key's ids and addresses unique, fold)

    @staticmethod
    def make_bn(channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels)

    def extra_repr(self) -> str:
        kind = "dw" if self.depthwise else "conv"
        return f"{kind} {self.in_channels}->{self.out_channels} k{self.kernel_size} s{self.stride} {self.act}"

    # The elastic subclass overrides these three.
    def active_kernel_size(self) -> int:
        return self.kernel_size

    def active_weight(self, in_channels: int) -> torch.Tensor:
        return self.weight

    def active_bias(self, out_channels: int) -> torch.Tensor | None:
        return self.bias

    def quantized(self) -> bool:
        return self.weight_quant.bits is not None and self.act_quant.bits is not None

    def folded(self, in_channels: int, in_hw: tuple[int, int], name: str = "") -> FoldedConv:
        """This conv's exact integer form (eval mode) for an input of ``in_channels`` x ``in_hw``.

        Cached, because the eval forward needs it on every batch and ``fold_conv`` redoes all its
        float64 work each time; a change to anything it reads refolds (see ``_fold_key``).
        """
        tensors = [*self.parameters(), *self.buffers()]
        key = self._fold_key(in_channels, in_hw, name, tensors)
        if self._fold_cache is None or self._fold_cache[0] != key:
            # Holding the tensors and their storages keeps their ids and addresses from being reused
            # by others while the key names them.
            alive = [(t, t.untyped_storage()) for t in tensors]
            self._fold_cache = (key, alive, fold_conv(self, in_channels, in_hw, name))
        return self._fold_cache[2]

    def folded_for(self, x: torch.Tensor) -> FoldedConv:
        """The integer form the eval forward runs on input ``x`` (the same cache entry)."""
        return self.folded(x.shape[1], (x.shape[-2], x.shape[-1]))

    def _fold_key(self, in_channels: int, in_hw: tuple[int, int], name: str, tensors: list[torch.Tensor]) -> tuple:
        """Everything ``fold_conv`` reads: its arguments; every public attribute of this conv and its
        submodules (bits and bit choices, active width and kernel, stride, BN eps, mode, ... - all of
        them, so that a choice added later cannot go stale); and every parameter and buffer (weights,
        kernel transforms, BN, LSQ steps, BatchQuant ranges) by identity, address and version. In-place
        writes (optimizer steps, calibration, ``load_state_dict``, ``w.add_()`` under ``no_grad``) bump
        ``_version``; ``.data = ...`` and ``.to()`` change the address. Writes through a ``.data`` alias
        (``w.data.add_()``) bump nothing: call ``.eval()`` after them, which drops the cache."""
        attrs = tuple((k, v) for m in self.modules() for k, v in vars(m).items() if not k.startswith("_"))
        versions = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        return in_channels, tuple(in_hw), name, attrs, versions

    def train(self, mode: bool = True) -> QuantConv:
        # Either way the next eval folds afresh: training rewrites weights and statistics, and
        # .eval() is how to refold after writes the key cannot see.
        self._fold_cache = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_fold_cache": None}  # a copy has its own tensors: it folds afresh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.quantized():  # evaluation runs what the exports run
            return integer_conv(x, self.folded_for(x))
        x = self.act_quant(x)
        weight = self.weight_quant(self.active_weight(x.shape[1]))
        weight, padding = crop_to_input(weight, x.shape[-1])
        groups = x.shape[1] if self.depthwise else 1
        y = F.conv2d(x, weight, self.active_bias(weight.shape[0]), self.stride, padding, 1, groups)
        if self.bn is not None:
            y = self.bn(y)
        return apply_act(y, self.act)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite in float: pool -> 1x1 reduce -> ReLU -> 1x1 expand -> h-sigmoid.

    Kept in full precision (as in the paper's code): it acts on a pooled vector, costs <1% of the
    MACs and its output only rescales channels.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return F.hardsigmoid(self.expand(F.relu(self.reduce(y))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
