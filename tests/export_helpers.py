"""Shared by the fold / ONNX export tests: a random supernet whose quantizers all do something, and
per-quantizer code comparisons."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.calibrate import calibrate
from qfa_deploy.extract import extract
from qfa_deploy.quant import BatchQuant

SPACE = "qfa-mbv3-cifar10"
ALL_PAIRS = {(w, a) for w in (2, 3, 4) for a in (2, 3, 4)}


def perturbed_supernet(base):
    """A copy of a random supernet with non-trivial BatchQuant offsets/multipliers, BN affine and
    a classifier large enough for logits of order 1 (a fresh supernet has beta = 0, so every
    zero point would be an integer and the shift path would go untested)."""
    net = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BatchQuant):
                m.offset.copy_(torch.rand(m.offset.shape, generator=g) * 1.6 - 0.8)
                m.scale_param.copy_(torch.randn(m.scale_param.shape, generator=g) * 0.3)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        net.classifier.weight.normal_(0.0, 0.2, generator=g)
        net.classifier.bias.normal_(0.0, 0.5, generator=g)
        net.classifier.weight_quant.init_steps(net.classifier.weight)
    return net.eval()


def calibrated(net, cfg: ArchConfig, seed: int = 0, batches: int = 4, batch_size: int = 16):
    """Extract ``cfg`` and calibrate it on standard-normal images (fixed seed), in eval mode."""
    net.set_active(cfg)
    subnet = extract(net, cfg)
    g = torch.Generator().manual_seed(10_000 + seed)
    r = cfg.resolution
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout during calibration
        calibrate(subnet, (torch.randn(batch_size, 3, r, r, generator=g) for _ in range(batches)), r, batches)
    return subnet.eval()


def images(cfg: ArchConfig, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(20_000 + seed)
    return torch.randn(n, 3, cfg.resolution, cfg.resolution, generator=g)


def random_cfg(seed: int) -> ArchConfig:
    return sample_arch(SPACE, random.Random(seed))


def bit_pairs(cfg: ArchConfig) -> set[tuple[int, int]]:
    """The (weight, activation) bit pairs of the elastic convs ``cfg`` runs."""
    pairs = set(zip(cfg.first_w_bits, cfg.first_a_bits, strict=True))
    for i in cfg.active_blocks():
        pairs |= set(zip(cfg.w_bits[i], cfg.a_bits[i], strict=True))
    return pairs | {(cfg.final_w_bits, cfg.final_a_bits)}


def code_diffs(reference: dict, other: dict) -> tuple[int, int, int]:
    """(largest |code difference|, number of differing codes, number of codes) over every quantizer."""
    assert set(reference) == set(other), set(reference) ^ set(other)
    worst = differing = total = 0
    for name, ref in reference.items():
        a = np.asarray(ref).astype(np.int64)
        b = np.asarray(other[name]).astype(np.int64)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        d = np.abs(a - b)
        worst = max(worst, int(d.max()))
        differing += int((d > 0).sum())
        total += d.size
    return worst, differing, total


def argmax_agrees(reference: np.ndarray, other: np.ndarray, tolerance: float) -> bool:
    """Same argmax wherever the reference's top-2 margin exceeds ``2 * tolerance`` (near-ties may
    legitimately swap under float rounding)."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    return bool(np.all(reference.argmax(1)[decided] == other.argmax(1)[decided]))
