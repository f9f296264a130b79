"""Shared fixtures: small supernets with statistics, single-threaded torch for stable timings."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar_supernet():
    """A randomly initialised CIFAR supernet whose BN/BatchQuant statistics are set."""
    from qfa_deploy.nn.supernet import QFASupernet

    torch.manual_seed(0)
    net = QFASupernet("qfa-mbv3-cifar10")
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32))
    return net.eval()
