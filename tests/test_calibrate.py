"""Calibration: BN statistics and BatchQuant ranges become cumulative averages over the batches."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.calibrate import calibrate
from qfa_deploy.extract import extract
from qfa_deploy.quant import BatchQuant

CIFAR = "qfa-mbv3-cifar10"


def batches(n: int, seed: int = 0, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=g) * (1 + 0.5 * i) + 0.2 * i for i in range(n)]


def record_inputs(model: nn.Module) -> tuple[dict, list]:
    """Per module, the statistics of every input it sees, computed here independently."""
    seen: dict[nn.Module, list] = {}

    def bn_hook(module, args):
        x = args[0].detach().double()
        seen.setdefault(module, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

    def bq_hook(module, args):
        x = args[0].detach().double()
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1) if x.ndim == 4 else x.t()
        lo = float(per_channel.min(1).values.mean())
        hi = float(per_channel.max(1).values.mean())
        seen.setdefault(module, []).append((min(lo, 0.0), max(hi, 0.0)))

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_hook))
        elif isinstance(m, BatchQuant):
            hooks.append(m.register_forward_pre_hook(bq_hook))
    return seen, hooks


def check_cumulative(model: nn.Module, seen: dict, n: int) -> tuple[int, int]:
    bn_count = bq_count = 0
    for m, stats in seen.items():
        assert len(stats) == n
        if isinstance(m, nn.BatchNorm2d):
            c = stats[0][0].numel()
            mean = sum(s[0] for s in stats) / n
            var = sum(s[1] for s in stats) / n
            assert torch.allclose(m.running_mean[:c].double(), mean, rtol=1e-4, atol=1e-5)
            assert torch.allclose(m.running_var[:c].double(), var, rtol=1e-4, atol=1e-5)
            assert int(m.num_batches_tracked) == n
            bn_count += 1
        else:
            lo = sum(s[0] for s in stats) / n
            hi = sum(s[1] for s in stats) / n
            assert float(m.running_min) == pytest.approx(lo, rel=1e-5, abs=1e-6)
            assert float(m.running_max) == pytest.approx(hi, rel=1e-5, abs=1e-6)
            assert int(m.num_batches_tracked) == n
            bq_count += 1
    return bn_count, bq_count


def momenta(model: nn.Module) -> list:
    return [m.momentum for m in model.modules() if isinstance(m, (nn.BatchNorm2d, BatchQuant))]


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_static_subnet_calibration(cifar_supernet):
    cfg = sample_arch(CIFAR, random.Random(5))
    subnet = extract(cifar_supernet, cfg)
    before = snapshot(subnet)
    saved = momenta(subnet)
    assert set(saved) == {0.1}

    seen, hooks = record_inputs(subnet)
    data = batches(5)
    try:
        out = calibrate(subnet, iter(data), cfg.resolution, num_batches=3)
    finally:
        for h in hooks:
            h.remove()
    assert out is subnet and not subnet.training
    bn_count, bq_count = check_cumulative(subnet, seen, 3)  # only the first 3 of 5 batches
    convs = subnet.quant_convs()
    assert bq_count == len(convs) and bn_count == sum(c.bn is not None for c in convs)
    assert momenta(subnet) == saved
    after = subnet.state_dict()
    changed = {k for k in after if "running" in k and not torch.equal(after[k], before[k])}
    unchanged = {k for k in after if "running" in k} - changed
    # all changed but the lower ends of ranges that are 0 before and after (inputs after ReLU)
    assert all(k.endswith("running_min") and float(after[k]) == 0.0 for k in unchanged), unchanged
    assert len(changed) >= 2 * bn_count + bq_count
    # learned parameters are untouched
    for k, v in before.items():
        if not any(s in k for s in ("running", "num_batches_tracked")):
            assert torch.equal(after[k], v), k


def test_calibration_forgets_the_previous_statistics(cifar_supernet):
    cfg = ArchConfig.smallest(CIFAR)
    a, b = extract(cifar_supernet, cfg), extract(cifar_supernet, cfg)
    calibrate(b, iter(batches(4, seed=9)), cfg.resolution, 4)  # b starts from other statistics
    torch.manual_seed(0)
    calibrate(a, iter(batches(3, seed=1)), cfg.resolution, 3)
    torch.manual_seed(0)
    calibrate(b, iter(batches(3, seed=1)), cfg.resolution, 3)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), rtol=1e-5, atol=1e-6), k


def test_supernet_calibration_elastic_widths(cifar_supernet):
    net = copy.deepcopy(cifar_supernet)  # has non-trivial statistics (momentum 0.1)
    cfg = ArchConfig.smallest(CIFAR)  # expand 3 of 6: half-width BN slices
    net.set_active(cfg)
    seen, hooks = record_inputs(net)
    try:
        calibrate(net, iter(batches(3, seed=4)), cfg.resolution, 3)
    finally:
        for h in hooks:
            h.remove()
    check_cumulative(net, seen, 3)
    bns = [(m, s) for m, s in seen.items() if isinstance(m, nn.BatchNorm2d)]
    partial = [m for m, s in bns if s[0][0].numel() < m.num_features]
    assert partial  # the elastic slicing path was exercised
    assert set(momenta(net)) == {0.1}
    # a block the subnet skips keeps nothing of the old statistics (reset, never updated)
    skipped = net.blocks[3].project.bn
    assert skipped not in seen and int(skipped.num_batches_tracked) == 0
    assert torch.equal(skipped.running_mean, torch.zeros_like(skipped.running_mean))


def test_momentum_restored_on_failure(cifar_supernet):
    cfg = ArchConfig.smallest(CIFAR)
    subnet = extract(cifar_supernet, cfg).train()

    def broken():
        yield batches(1)[0]
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="died"):
        calibrate(subnet, broken(), cfg.resolution, 3)
    assert set(momenta(subnet)) == {0.1}
    assert subnet.training  # mode restored too

    subnet.eval()
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(subnet, iter([]), cfg.resolution, 3)
    assert set(momenta(subnet)) == {0.1} and not subnet.training
