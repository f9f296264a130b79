"""``QFASupernet.init_weight_steps`` (train's re-initialisation after the float phase, and
``convert ofa-checkpoint``'s): LSQ's ``2 mean|w| / sqrt(qmax)`` on the weight each quantizer quantizes.
A depthwise conv's step of kernel size k comes from the k x k kernel the transforms make (the seed's
``get_active_filter(k)``), not from the whole 7x7 weight."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from qfa_deploy.arch import ArchConfig
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.quant.lsq import signed_range


def _lsq_steps(weight: torch.Tensor, bit_choices) -> torch.Tensor:
    mean_abs = weight.abs().mean()
    return torch.stack([2 * mean_abs / math.sqrt(signed_range(b)[1]) for b in bit_choices])


def _kernel(dw, k: int) -> torch.Tensor:
    """The k x k kernel, written out: centre of the next larger one, times its transform."""
    weight = dw.weight
    for size in (5, 3):
        if size < k:
            break
        lo = (weight.shape[-1] - size) // 2
        centre = weight[:, :, lo:lo + size, lo:lo + size]
        weight = (centre.reshape(-1, size * size) @ dw.transforms[str(size)]).reshape(centre.shape)
    return weight


@torch.no_grad()
def test_each_kernel_size_steps_from_its_transformed_kernel():
    torch.manual_seed(0)
    net = QFASupernet("qfa-mbv3-cifar10")
    for name, p in net.named_parameters():  # trained-looking transforms: not the identity
        if "transforms" in name:
            p.add_(0.3 * torch.randn_like(p))
    cfg = ArchConfig.largest("qfa-mbv3-cifar10")
    net.set_active(replace(cfg, kernel=(5, *cfg.kernel[1:])))
    net.init_weight_steps()

    dw = net.blocks[0].depthwise
    assert dw.active_kernel == 5  # the active kernel is left where set_active put it
    apart = []
    for block in net.blocks:
        dw = block.depthwise
        for k in (3, 5, 7):
            lsq = dw.per_kernel[str(k)].weight_quant
            expected = _lsq_steps(_kernel(dw, k), lsq.bit_choices)
            assert torch.allclose(lsq.step, expected, rtol=1e-6, atol=0), (k, lsq.step, expected)
        whole = _lsq_steps(dw.weight, dw.per_kernel["3"].weight_quant.bit_choices)
        apart.append(float((dw.per_kernel["3"].weight_quant.step / whole - 1).abs().max()))
    assert max(apart) > 0.01  # the whole-weight rule would give other steps here
    for conv in (net.stem, net.blocks[0].expand, net.blocks[0].project, net.feature_mix, net.classifier):
        assert torch.allclose(conv.weight_quant.step, _lsq_steps(conv.weight, conv.weight_quant.bit_choices),
                              rtol=1e-6, atol=0)
