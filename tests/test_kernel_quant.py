"""Depthwise convs keep one weight and one input quantizer per kernel size (as the seed does)."""

from __future__ import annotations

from dataclasses import replace

import torch

from qfa_deploy.arch import ArchConfig
from qfa_deploy.checkpoint import float32_model_state, load_checkpoint
from qfa_deploy.commands.common import load_supernet
from qfa_deploy.extract import extract
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.reference import default_checkpoint

CIFAR = "qfa-mbv3-cifar10"


def _with_kernel(cfg: ArchConfig, block: int, kernel: int) -> ArchConfig:
    kernels = list(cfg.kernel)
    kernels[block] = kernel
    return replace(cfg, kernel=tuple(kernels))


def test_layout_one_pair_per_kernel_size():
    net = QFASupernet(CIFAR)
    keys = net.state_dict().keys()
    for k in (3, 5, 7):
        assert f"blocks.0.depthwise.per_kernel.{k}.weight_quant.step" in keys
        assert f"blocks.0.depthwise.per_kernel.{k}.act_quant.running_max" in keys
    assert not any(key.startswith("blocks.") and ".depthwise.weight_quant." in key for key in keys)
    # one kernel size: one pair, as before; 1x1 convs likewise
    assert "first_block.depthwise.weight_quant.step" in keys and "blocks.0.expand.weight_quant.step" in keys
    net.init_weight_steps()
    steps = [net.blocks[0].depthwise.per_kernel[str(k)].weight_quant.step for k in (3, 5, 7)]
    assert all(not torch.equal(s, torch.ones_like(s)) for s in steps)  # every size initialised, not only the active


def test_former_shared_layout_loads_into_every_kernel_size():
    """The embedded checkpoint has one shared pair: each kernel size gets an exact copy."""
    state = float32_model_state(load_checkpoint(default_checkpoint()))
    assert "blocks.0.depthwise.weight_quant.step" in state
    net = load_supernet(None)
    for b, block in enumerate(net.blocks):
        for k, kq in block.depthwise.per_kernel.items():
            assert torch.equal(kq.weight_quant.step, state[f"blocks.{b}.depthwise.weight_quant.step"]), (b, k)
            for name in ("scale_param", "offset", "running_min", "running_max", "num_batches_tracked"):
                assert torch.equal(getattr(kq.act_quant, name), state[f"blocks.{b}.depthwise.act_quant.{name}"])
    again = QFASupernet(CIFAR)
    again.load_state_dict(net.state_dict())  # the new layout round-trips
    assert torch.equal(again.blocks[3].depthwise.per_kernel["5"].act_quant.running_max,
                       net.blocks[3].depthwise.per_kernel["5"].act_quant.running_max)


@torch.no_grad()
def test_each_kernel_size_runs_its_own_quantizers():
    net = load_supernet(None)
    base = ArchConfig.largest(CIFAR, 3)
    b = base.active_blocks()[2]
    k5, k7 = _with_kernel(base, b, 5), _with_kernel(base, b, 7)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = {}
    for cfg in (k5, k7):
        net.set_active(cfg)
        before[cfg.kernel[b]] = net(x)
    kq5 = net.blocks[b].depthwise.per_kernel["5"]
    kq5.weight_quant.step.mul_(1.7)
    kq5.act_quant.running_max.mul_(1.3)
    net.eval()  # refold
    net.set_active(k7)
    assert torch.equal(net(x), before[7])  # the 7x7 subnet does not see the 5x5 quantizers
    net.set_active(k5)
    assert not torch.equal(net(x), before[5])
    sub = extract(net, k5)
    assert torch.equal(sub.blocks[2].depthwise.weight_quant.step, kq5.weight_quant.step[[1]])  # 3 bits: index 1
    assert torch.equal(sub.blocks[2].depthwise.act_quant.running_max, kq5.act_quant.running_max)
