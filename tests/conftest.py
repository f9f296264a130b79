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


@pytest.fixture(scope="session")
def emulated_pi_image():
    """The emulated Raspberry Pi's image (built once, then cached); skips where its tools are missing."""
    from qfa_deploy.deploy.emulated_pi import build_emulated_pi, missing_tools

    missing = missing_tools()
    if missing:
        pytest.skip(f"the emulated Pi needs {', '.join(missing)}")
    return build_emulated_pi()
