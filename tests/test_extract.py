"""extract(supernet, cfg) is exactly the supernet's active subnet, for every bitwidth."""

import random

import pytest
import torch

from qfa_deploy.arch import sample_arch
from qfa_deploy.extract import extract


@pytest.mark.parametrize("seed", range(20))
def test_extract_equals_active_subnet(cifar_supernet, seed):
    rng = random.Random(seed)
    cfg = sample_arch("qfa-mbv3-cifar10", rng)
    if seed < 3:  # uniform configs make sure every bitwidth runs everywhere
        cfg = cfg.with_uniform_bits(2 + seed, 2 + seed)
    cifar_supernet.set_active(cfg)
    x = torch.randn(4, 3, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = cifar_supernet(x)
        static = extract(cifar_supernet, cfg).eval()
        got = static(x)
    assert torch.equal(expected, got)
    assert not any("Elastic" in type(m).__name__ for m in static.modules())


def test_extract_covers_every_bitwidth():
    rng = random.Random(0)
    seen = set()
    for seed in range(20):
        cfg = sample_arch("qfa-mbv3-cifar10", random.Random(seed))
        if seed < 3:
            cfg = cfg.with_uniform_bits(2 + seed, 2 + seed)
        for i in cfg.active_blocks():
            seen.update(zip(cfg.w_bits[i], cfg.a_bits[i], strict=True))
    assert seen == {(w, a) for w in (2, 3, 4) for a in (2, 3, 4)}
    del rng
