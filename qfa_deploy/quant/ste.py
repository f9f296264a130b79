"""Straight-through helpers shared by the quantizers."""

import torch

__all__ = ["grad_scale", "round_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half-to-even forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``scale`` backward (LSQ's step-size gradient scale)."""
    return (x - x * scale).detach() + x * scale
