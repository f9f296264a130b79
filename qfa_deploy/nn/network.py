"""The network skeleton shared by the supernet and its static subnets.

stem 3x3 conv (8-bit) -> first block (expand 1) -> MBConv blocks -> final expand 1x1 ->
global average pool -> feature-mix 1x1 (8-bit, no BN) -> dropout -> classifier 1x1 (8-bit, bias).
"""

from __future__ import annotations

import torch
from torch import nn

from qfa_deploy.nn.layers import QuantConv
from qfa_deploy.nn.mbconv import MBConv

__all__ = ["QuantMobileNet"]


class QuantMobileNet(nn.Module):
    """Stem, blocks, head. Subclasses choose which blocks run (``running_blocks``)."""

    def __init__(
        self,
        stem: QuantConv,
        first_block: MBConv,
        blocks: list[MBConv],
        final_expand: QuantConv,
        feature_mix: QuantConv,
        classifier: QuantConv,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.first_block = first_block
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def running_blocks(self) -> list[MBConv]:
        return list(self.blocks)

    def quant_convs(self) -> list[QuantConv]:
        """Every quantized conv in execution order."""
        convs = [self.stem, *self.first_block.convs()]
        for block in self.running_blocks():
            convs += block.convs()
        return convs + [self.final_expand, self.feature_mix, self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for block in self.running_blocks():
            x = block(x)
        x = self.final_expand(x)
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        x = self.classifier(self.dropout(x))
        return x.flatten(1)
