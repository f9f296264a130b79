"""Straight-through helpers shared by the quantizers."""

import torch

__all__ = ["grad_scale", "round_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half-to-even forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``scale`` backward (LSQ's step-size gradient scale).

    The forward is exactly ``x`` (``y - y`` is exactly 0), so the step the forward uses is the
    step the folder stores; ``(x - x * scale) + x * scale`` is off by one ulp for ~1% of values.
    """
    y = x * scale
    return x.detach() + (y - y.detach())
