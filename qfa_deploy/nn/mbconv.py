"""The MobileNetV3 inverted-residual block, shared by the supernet and its static subnets."""

from __future__ import annotations

import torch
from torch import nn

from qfa_deploy.nn.layers import QuantConv

__all__ = ["MBConv"]


class MBConv(nn.Module):
    """[expand 1x1] -> depthwise kxk -> [squeeze-excite] -> project 1x1 (+ identity shortcut)."""

    def __init__(
        self,
        expand: QuantConv | None,
        depthwise: QuantConv,
        se: nn.Module | None,
        project: QuantConv,
        residual: bool,
    ) -> None:
        super().__init__()
        self.expand = expand
        self.depthwise = depthwise
        self.se = se
        self.project = project
        self.residual = residual

    def convs(self) -> list[QuantConv]:
        """The quantized convs in order (expand, depthwise, project; no expand in the first block)."""
        return [c for c in (self.expand, self.depthwise, self.project) if c is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y
