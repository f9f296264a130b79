"""Small functional pieces shared by the float (training) and the integer (eval, export) conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "apply_act", "crop_to_input"]

ACTIVATIONS = ("none", "relu", "hswish")


def apply_act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "hswish":
        return F.hardswish(x)
    return x


def crop_to_input(weight: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """``(weight, padding)`` without the kernel border that only ever meets zero padding (exact, and
    much faster on the small late-stage maps: a 7x7 kernel on a 2x2 map only uses its centre 3x3)."""
    k = weight.shape[-1]
    useful = 2 * size - 1
    if k <= useful:
        return weight, k // 2
    lo = (k - useful) // 2
    return weight[..., lo : lo + useful, lo : lo + useful], size - 1
