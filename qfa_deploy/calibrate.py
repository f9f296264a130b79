"""Per-subnet calibration: BatchNorm statistics and BatchQuant running ranges from scratch.

Like BatchNorm statistics in Once-for-All, BatchQuant's inference ranges belong to a subnet, not to
the supernet: they are reset and recomputed as cumulative averages over N calibration batches, in
training mode without gradients. Momenta are restored afterwards (try/finally).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from qfa_deploy.data import resize
from qfa_deploy.quant import BatchQuant

__all__ = ["calibrate", "cumulative_statistics"]


@contextmanager
def cumulative_statistics(model: nn.Module):
    """Reset BN/BatchQuant statistics and make them cumulative averages for the duration."""
    saved = []
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, BatchQuant)):
            saved.append((m, m.momentum))
            m.reset_running_stats()
            m.momentum = None
    was_training = model.training
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], resolution: int, num_batches: int) -> nn.Module:
    """Recompute the statistics of ``model`` (a supernet with its active subnet, or a static one)."""
    device = next(model.parameters()).device  # batches come from the CPU; the model may be on a GPU
    with cumulative_statistics(model):
        model.train()
        seen = 0
        for x in batches:
            if seen == num_batches:
                break
            model(resize(x.to(device), resolution))
            seen += 1
        if seen == 0:
            raise ValueError("calibration needs at least one batch")
    return model.eval()
