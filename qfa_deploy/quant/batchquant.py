"""BatchQuant activation quantizer (Bai et al., NeurIPS 2021).

Training: the range comes from the current batch, per-channel min and max averaged over channels,
widened to include 0. With ``qmax = 2^b - 1``::

    s = (max - min) / qmax,   z = clamp(round(-min / s), 0, qmax)
    alpha = softplus_{ln 2}(a)            # learned scale multiplier, = 1 at a = 0
    q = clamp(round(x * alpha / s + z + beta), 0, qmax)      # beta: learned real offset
    x_hat = (q - z - beta) * s / alpha

Rounding is straight-through (gradients reach x inside the range, alpha and beta). The batch range
is a statistic, not a parameter: no gradient flows into it.

Evaluation uses the running min/max (recomputed per subnet by calibration, like BatchNorm
statistics) and the algebraically identical form the exporter emits, so that PyTorch and ONNX run
the same operations. With ``s' = s / alpha``, ``Z = clamp(round(z + beta), 0, qmax)`` (an integer
zero point) and the constant ``c = (z + beta - Z) * s'``::

    q = round(clamp(x + c, -Z s', (qmax - Z) s') / s') + Z
    x_hat = (q - Z) * s' - c

``c`` is BatchQuant's real offset folded exactly: the integer part went into ``Z``, the rest is a
constant shift before quantisation and after dequantisation.

Running ranges: one per quantizer (shared by its bit choices), or, with ``per_bit_ranges`` (the seed's
layout: one observer per bit choice), one per bit choice, each tracked only while its bit is active.
A state dict with one shared range loads into a per-bit quantizer as that range for every bit, so
every subnet computes what it computed before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qfa_deploy.quant.batchquant_fn import batchquant_train

__all__ = ["BatchQuant", "FixedActQuant", "batch_range"]

SOFTPLUS_BETA = math.log(2.0)  # softplus_beta(0) == 1


def batch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min/max over (N, H, W), averaged over channels, widened to include 0."""
    x = x.detach()
    dims = (0, 2, 3) if x.ndim == 4 else (0,)
    lo, hi = x.amin(dim=dims), x.amax(dim=dims)
    return lo.mean().clamp(max=0.0), hi.mean().clamp(min=0.0)


@dataclass(frozen=True)
class FixedActQuant:
    """The inference-time constants of one activation quantizer (what the folder exports)."""

    bits: int
    scale: float  # s' = s / alpha
    zero_point: int  # Z, in [0, 2^bits - 1]
    shift: float  # c, added before quantisation and subtracted after

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1


class BatchQuant(nn.Module):
    """BatchQuant with learned (alpha, beta) per bit choice and running range statistics."""

    def __init__(
        self, bit_choices: Sequence[int], momentum: float | None = 0.1, per_bit_ranges: bool = False
    ) -> None:
        super().__init__()
        self.bit_choices = tuple(bit_choices)
        self.bits: int | None = self.bit_choices[-1]  # None = full precision
        self.momentum = momentum  # None: cumulative average (calibration)
        # one running range per bit choice (with a single choice there is nothing to separate)
        self.per_bit_ranges = per_bit_ranges and len(self.bit_choices) > 1
        self.scale_param = nn.Parameter(torch.zeros(len(self.bit_choices)))
        self.offset = nn.Parameter(torch.zeros(len(self.bit_choices)))
        shape = (len(self.bit_choices),) if self.per_bit_ranges else ()
        self.register_buffer("running_min", torch.zeros(shape))
        self.register_buffer("running_max", torch.zeros(shape))
        self.register_buffer("num_batches_tracked", torch.zeros(shape, dtype=torch.long))

    def extra_repr(self) -> str:
        per_bit = ", per-bit ranges" if self.per_bit_ranges else ""
        return f"bit_choices={self.bit_choices}, bits={self.bits}{per_bit}"

    def reset_running_stats(self) -> None:
        self.running_min.zero_()
        self.running_max.zero_()
        self.num_batches_tracked.zero_()

    def _index(self) -> int:
        return self.bit_choices.index(self.bits)

    def _slot(self, bits: int | None = None) -> tuple:
        """Where the running range of ``bits`` (default: the active bits) is: an index or ``()``."""
        if not self.per_bit_ranges:
            return ()
        return (self.bit_choices.index(self.bits if bits is None else bits),)

    def running_range(self, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The running (min, max) that ``bits`` (default: the active bits) quantize with, 0-d tensors."""
        slot = self._slot(bits)
        return self.running_min[slot], self.running_max[slot]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # one shared range (the layout without per-bit ranges) becomes that range for every bit
        if self.per_bit_ranges:
            for name in ("running_min", "running_max", "num_batches_tracked"):
                value = state_dict.get(prefix + name)
                if isinstance(value, torch.Tensor) and value.ndim == 0:
                    state_dict[prefix + name] = value.expand(len(self.bit_choices)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def alpha(self) -> torch.Tensor:
        return F.softplus(self.scale_param[self._index()], beta=SOFTPLUS_BETA)

    @torch.no_grad()
    def _track(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        # unquantized (bits None, the float phase): the range is the same for every bit, so every
        # per-bit slot tracks it
        slot = (slice(None),) if self.per_bit_ranges and self.bits is None else self._slot()
        self.num_batches_tracked[slot] += 1
        count = int(self.num_batches_tracked[slot].max())
        m = 1.0 / count if self.momentum is None else self.momentum
        if self.momentum is not None and count == 1:
            m = 1.0  # first batch sets the range instead of averaging with zeros
        self.running_min[slot].lerp_(lo, m)  # a view of the buffer (the whole 0-d one without per-bit ranges)
        self.running_max[slot].lerp_(hi, m)

    def _affine(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        qmax = 2**self.bits - 1
        s = ((hi - lo) / qmax).clamp_min(1e-8)
        z = torch.clamp(torch.round(-lo / s), 0, qmax)
        return s, z, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = batch_range(x)
            self._track(lo, hi)
            if self.bits is None:
                return x
            s, z, qmax = self._affine(lo, hi)
            # the formula above as one autograd Function: same forward bits, closed-form backward
            # (clamp, then round: rounding first would block the gradient of values that round to
            # the end levels, see batchquant_fn)
            return batchquant_train(x, s, z, self.alpha(), self.offset[self._index()], qmax)
        if self.bits is None:
            return x
        fixed = self.fixed()
        lo = -fixed.zero_point * fixed.scale
        hi = (fixed.qmax - fixed.zero_point) * fixed.scale
        q = torch.round(torch.clamp(x + fixed.shift, lo, hi) / fixed.scale) + fixed.zero_point
        return (q - fixed.zero_point) * fixed.scale - fixed.shift

    @torch.no_grad()
    def fixed(self) -> FixedActQuant:
        """Inference constants from the running range (float64 arithmetic, stored as float32)."""
        lo, hi = self.running_range()
        s, z, qmax = self._affine(lo.double(), hi.double())
        scale = float(torch.tensor(float(s / self.alpha().double()), dtype=torch.float32))
        zf = float(z) + float(self.offset[self._index()])
        zero_point = int(min(max(round(zf), 0), qmax))
        shift = float(torch.tensor((zf - zero_point) * scale, dtype=torch.float32))
        return FixedActQuant(bits=self.bits, scale=scale, zero_point=zero_point, shift=shift)

    def single(self, bits: int) -> BatchQuant:
        """A one-choice copy for the active bitwidth, running range included."""
        out = BatchQuant((bits,), momentum=self.momentum)
        i = self.bit_choices.index(bits)
        with torch.no_grad():
            out.scale_param.copy_(self.scale_param[i].reshape(1))
            out.offset.copy_(self.offset[i].reshape(1))
            slot = self._slot(bits)
            out.running_min.copy_(self.running_min[slot])
            out.running_max.copy_(self.running_max[slot])
            out.num_batches_tracked.copy_(self.num_batches_tracked[slot])
        return out
