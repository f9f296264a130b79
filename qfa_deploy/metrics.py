"""Cost of a subnet, counted on the actual static network: MACs, BitOPs, parameters, size.

- MACs ("FLOPs" in the OFA/QFA convention): multiply-accumulates of every conv, SE included.
- BitOPs: ``MACs * w_bits * a_bits / 64`` per quantized conv, as the seed counts (float SE convs
  count as 32 x 32).
- parameters: every learned weight of the deployed net (conv weights, biases, BN affine).
- size_bits: conv weights at their bitwidth; biases, BN and SE parameters at 32 bits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from qfa_deploy.arch import ArchConfig
from qfa_deploy.extract import extract
from qfa_deploy.nn.layers import QuantConv
from qfa_deploy.nn.supernet import QFASupernet

__all__ = ["SubnetCost", "subnet_cost"]


@dataclass(frozen=True)
class SubnetCost:
    macs: int
    bitops: float
    params: int
    size_bits: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mflops"] = self.macs / 1e6
        d["gbitops"] = self.bitops / 1e9
        d["size_kib"] = self.size_bits / 8 / 1024
        return d


@torch.no_grad()
def network_cost(net: nn.Module, resolution: int) -> SubnetCost:
    macs, bitops = [0], [0.0]

    def count(module: nn.Module, inputs, output) -> None:
        x = inputs[0]
        if isinstance(module, QuantConv):
            weight = module.weight
            w_bits, a_bits = module.weight_quant.bits or 32, module.act_quant.bits or 32
        else:  # float SE conv
            weight, w_bits, a_bits = module.weight, 32, 32
        k_area = weight.shape[2] * weight.shape[3]
        in_per_group = weight.shape[1]
        m = output.shape[1] * output.shape[2] * output.shape[3] * in_per_group * k_area
        del x
        macs[0] += m
        bitops[0] += m * w_bits * a_bits / 64

    hooks = [
        m.register_forward_hook(count) for m in net.modules() if isinstance(m, (QuantConv, nn.Conv2d))
    ]
    try:
        was_training = net.training
        net.eval()
        net(torch.zeros(1, 3, resolution, resolution))
        net.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    params, size = 0, 0
    for module in net.modules():
        if isinstance(module, QuantConv):
            params += module.weight.numel()
            size += module.weight.numel() * (module.weight_quant.bits or 32)
            for p in (module.bias, *(module.bn.parameters() if module.bn is not None else ())):
                if p is not None:
                    params += p.numel()
                    size += 32 * p.numel()
        elif isinstance(module, nn.Conv2d):
            n = sum(p.numel() for p in module.parameters())
            params += n
            size += 32 * n
    return SubnetCost(macs=macs[0], bitops=bitops[0], params=params, size_bits=size)


def subnet_cost(cfg: ArchConfig, supernet: QFASupernet | None = None) -> SubnetCost:
    """Cost of ``cfg``, counted on its extracted static network (weights do not matter)."""
    supernet = supernet or QFASupernet(cfg.space)
    return network_cost(extract(supernet, cfg), cfg.resolution)
