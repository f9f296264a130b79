"""LSQ-style learned activation quantizer: the ablation baseline for BatchQuant.

Unsigned b-bit grid with a learned step ``s`` and a learned offset ``o`` per bit choice (LSQ+)::

    q = round(clamp((x - o) / s, 0, qmax)),    x_hat = q * s + o

The step starts at LSQ's ``2 mean|x| / sqrt(qmax)`` from the first training batch. Unlike
BatchQuant its range is a parameter of the shared supernet, not a per-subnet statistic, which is the
difference the ablation measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from qfa_deploy.quant.batchquant import FixedActQuant
from qfa_deploy.quant.ste import grad_scale, round_ste

__all__ = ["LSQAct"]


class LSQAct(nn.Module):
    def __init__(self, bit_choices: Sequence[int], momentum: float | None = None) -> None:
        super().__init__()
        self.bit_choices = tuple(bit_choices)
        self.bits: int | None = self.bit_choices[-1]
        self.step = nn.Parameter(torch.ones(len(self.bit_choices)))
        self.offset = nn.Parameter(torch.zeros(len(self.bit_choices)))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"bit_choices={self.bit_choices}, bits={self.bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                mean_abs = x.detach().abs().mean().clamp_min(1e-4)
                for i, b in enumerate(self.bit_choices):
                    self.step[i] = 2 * mean_abs / math.sqrt(2**b - 1)
                self.initialised.fill_(True)
        if self.bits is None:
            return x
        i = self.bit_choices.index(self.bits)
        qmax = 2**self.bits - 1
        step = grad_scale(self.step[i].abs().clamp_min(1e-8), 1.0 / math.sqrt(x[0].numel() * qmax))
        offset = self.offset[i]
        return round_ste(torch.clamp((x - offset) / step, 0, qmax)) * step + offset

    @torch.no_grad()
    def fixed(self) -> FixedActQuant:
        i = self.bit_choices.index(self.bits)
        scale = float(self.step[i].abs().clamp_min(1e-8))
        return FixedActQuant(bits=self.bits, scale=scale, zero_point=0, shift=-float(self.offset[i]))

    def single(self, bits: int) -> LSQAct:
        out = LSQAct((bits,))
        i = self.bit_choices.index(bits)
        with torch.no_grad():
            out.step.copy_(self.step[i].reshape(1))
            out.offset.copy_(self.offset[i].reshape(1))
            out.initialised.copy_(self.initialised)
        return out
