"""``(a * b).sum()`` without the full-size temporary, for the quantizers' closed-form backwards."""

from __future__ import annotations

import torch

__all__ = ["sum_of_products"]


def _dense_flat(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as a 1-D view in memory order, or None if its elements are not one dense block."""
    if t.is_contiguous():
        return t.view(-1)
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # a view: NHWC order is the memory order
    return None


def sum_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum()``; one dot product over the raw memory when both share a dense layout
    (half the memory traffic of multiply-then-sum, and no allocation)."""
    if a.stride() == b.stride():
        fa, fb = _dense_flat(a), _dense_flat(b)
        if fa is not None and fb is not None:
            return torch.dot(fa, fb)
    return (a * b).sum()
