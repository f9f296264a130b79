"""LSQ weight quantizer (Esser et al., 2020): a learned per-tensor step for each bitwidth.

Signed b-bit grid ``[-2^(b-1), 2^(b-1) - 1]``::

    w_int = round(clamp(w / s, qmin, qmax))        # the integer weight the folder stores
    w_hat = w_int * s

Rounding is straight-through; the step's gradient is scaled by ``1 / sqrt(numel * qmax)``. The
supernet keeps one step per bit choice (the steps of 2 and 4 bits differ by ~5x), shared by every
channel slice and kernel size of the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from qfa_deploy.quant.lsq_fn import lsq_quantize

__all__ = ["LSQ", "signed_range"]


def signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class LSQ(nn.Module):
    """Per-tensor learned-step weight quantizer with one step per bit choice."""

    def __init__(self, bit_choices: Sequence[int]) -> None:
        super().__init__()
        self.bit_choices = tuple(bit_choices)
        self.bits: int | None = self.bit_choices[-1]  # None = full precision
        self.step = nn.Parameter(torch.ones(len(self.bit_choices)))

    def extra_repr(self) -> str:
        return f"bit_choices={self.bit_choices}, bits={self.bits}"

    @torch.no_grad()
    def init_steps(self, weight: torch.Tensor) -> None:
        """LSQ's initialisation ``2 mean|w| / sqrt(qmax)`` for every bit choice."""
        mean_abs = weight.abs().mean().clamp_min(1e-8)
        for i, b in enumerate(self.bit_choices):
            self.step[i] = 2 * mean_abs / math.sqrt(signed_range(b)[1])

    def active_step(self) -> torch.Tensor:
        return self.step[self.bit_choices.index(self.bits)].abs().clamp_min(1e-8)

    def integer(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer weights on the b-bit grid (float dtype), as the forward computes them."""
        qmin, qmax = signed_range(self.bits)
        return torch.round(torch.clamp(weight / self.active_step(), qmin, qmax))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return weight
        qmin, qmax = signed_range(self.bits)
        # the formula above as one autograd Function: same forward bits, closed-form backward
        return lsq_quantize(weight, self.active_step(), qmin, qmax, 1.0 / math.sqrt(weight.numel() * qmax))

    def single(self, bits: int) -> LSQ:
        """A one-choice copy for the active bitwidth (what ``extract`` puts in a static subnet)."""
        out = LSQ((bits,))
        with torch.no_grad():
            out.step.copy_(self.step[self.bit_choices.index(bits)].reshape(1))
        return out
