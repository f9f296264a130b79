"""extract: the active subnet of a supernet as a static quantized network with its own weights.

The result has no elastic logic: plain ``QuantConv`` layers holding the sliced (and kernel-
transformed) weights, sliced BatchNorm, and one-bitwidth copies of the quantizers. In eval mode its
output equals the supernet's active subnet exactly: both run the same layer code on the same values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qfa_deploy.arch import ArchConfig
from qfa_deploy.nn.elastic import ElasticQuantConv, ElasticSqueezeExcite
from qfa_deploy.nn.layers import QuantConv, SqueezeExcite
from qfa_deploy.nn.mbconv import MBConv
from qfa_deploy.nn.network import QuantMobileNet
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.space import make_divisible

__all__ = ["StaticSubnet", "extract"]


class StaticSubnet(QuantMobileNet):
    """A fixed quantized subnet; ``arch`` records the config it was extracted for."""

    arch: ArchConfig


@torch.no_grad()
def _static_conv(conv: QuantConv, in_channels: int) -> QuantConv:
    if not isinstance(conv, ElasticQuantConv):
        static = copy.deepcopy(conv)
        w_bits, a_bits = conv.weight_quant.bits, conv.act_quant.bits
        if len(conv.weight_quant.bit_choices) > 1 and w_bits is not None and a_bits is not None:
            static.weight_quant = conv.weight_quant.single(w_bits)  # the feature mix of elastic-mix spaces
            static.act_quant = conv.act_quant.single(a_bits)
        return static
    weight = conv.active_weight(in_channels).detach().clone()
    out_channels = weight.shape[0]
    w_bits, a_bits = conv.weight_quant.bits, conv.act_quant.bits
    if w_bits is None or a_bits is None:
        raise ValueError("extract needs a quantized active subnet (set_active(cfg, quantized=True))")
    static = QuantConv(
        in_channels, out_channels, conv.active_kernel, conv.stride, depthwise=conv.depthwise,
        act=conv.act, use_bn=conv.bn is not None, use_bias=conv.bias is not None,
        w_bit_choices=(w_bits,), a_bit_choices=(a_bits,),
    )
    static.weight.copy_(weight)
    if conv.bias is not None:
        static.bias.copy_(conv.bias[:out_channels])
    if conv.bn is not None:
        bn = conv.bn
        static.bn.eps, static.bn.momentum = bn.eps, bn.momentum
        static.bn.weight.copy_(bn.weight[:out_channels])
        static.bn.bias.copy_(bn.bias[:out_channels])
        static.bn.running_mean.copy_(bn.running_mean[:out_channels])
        static.bn.running_var.copy_(bn.running_var[:out_channels])
        static.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
    static.weight_quant = conv.weight_quant.single(w_bits)
    static.act_quant = conv.act_quant.single(a_bits)
    return static


@torch.no_grad()
def _static_se(se: nn.Module | None, channels: int) -> SqueezeExcite | None:
    if not isinstance(se, ElasticSqueezeExcite):
        return copy.deepcopy(se)
    reduced = make_divisible(channels // 4)
    out = SqueezeExcite(channels, reduced)
    out.reduce.weight.copy_(se.reduce.weight[:reduced, :channels])
    out.reduce.bias.copy_(se.reduce.bias[:reduced])
    out.expand.weight.copy_(se.expand.weight[:channels, :reduced])
    out.expand.bias.copy_(se.expand.bias[:channels])
    return out


def _static_block(block: MBConv, in_channels: int) -> tuple[MBConv, int]:
    expand = None if block.expand is None else _static_conv(block.expand, in_channels)
    mid = in_channels if expand is None else expand.out_channels
    depthwise = _static_conv(block.depthwise, mid)
    project = _static_conv(block.project, mid)
    static = MBConv(expand, depthwise, _static_se(block.se, mid), project, block.residual)
    return static, project.out_channels


def extract(supernet: QFASupernet, cfg: ArchConfig | None = None) -> StaticSubnet:
    """The static subnet of ``cfg`` (default: the supernet's active one), in the supernet's mode."""
    if cfg is not None:
        supernet.set_active(cfg)
    sp = supernet.space
    stem = _static_conv(supernet.stem, 3)
    first, channels = _static_block(supernet.first_block, stem.out_channels)
    blocks = []
    for block in supernet.running_blocks():
        static, channels = _static_block(block, channels)
        blocks.append(static)
    final_expand = _static_conv(supernet.final_expand, channels)
    net = StaticSubnet(
        stem=stem,
        first_block=first,
        blocks=blocks,
        final_expand=final_expand,
        feature_mix=_static_conv(supernet.feature_mix, final_expand.out_channels),
        classifier=_static_conv(supernet.classifier, sp.feature_mix_width),
        dropout=sp.dropout,
    )
    net.arch = supernet.active
    return net.train(supernet.training)
