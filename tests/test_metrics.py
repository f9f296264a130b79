"""subnet_cost against a hand count, layer by layer, of one small CIFAR subnet."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from click.testing import CliRunner

from qfa_deploy.arch import ArchConfig
from qfa_deploy.cli import cli
from qfa_deploy.metrics import subnet_cost
from qfa_deploy.space import create_space

CIFAR = "qfa-mbv3-cifar10"


def divisible8(v: float) -> int:
    """Round to a multiple of 8, never below 8 nor more than 10% down (MobileNet's rule)."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def conv_out(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


class Count:
    def __init__(self) -> None:
        self.macs, self.bitops, self.params, self.size_bits = 0, 0.0, 0, 0

    def conv(self, h_out: int, c_in: int, c_out: int, k: int, w_bits: int, a_bits: int, *,
             depthwise: bool = False, bn: bool = True, bias: bool = False) -> None:
        weights = c_out * (1 if depthwise else c_in) * k * k
        macs = h_out * h_out * weights
        self.macs += macs
        self.bitops += macs * w_bits * a_bits / 64
        extra = (2 * c_out if bn else 0) + (c_out if bias else 0)
        self.params += weights + extra
        self.size_bits += weights * w_bits + 32 * extra

    def se(self, c: int, r: int) -> None:
        # float 1x1 convs on the pooled vector, with biases; counted as 32-bit x 32-bit
        macs = 2 * c * r
        self.macs += macs
        self.bitops += macs * 32 * 32 / 64
        self.params += 2 * c * r + r + c
        self.size_bits += 32 * (2 * c * r + r + c)


def hand_count(cfg: ArchConfig) -> Count:
    sp = create_space(cfg.space)
    n = Count()
    h = conv_out(cfg.resolution, 3, sp.stem_stride)
    n.conv(h, 3, sp.stem_width, 3, 8, 8)  # stem: 8-bit, BN, h-swish
    c = sp.stem_width
    n.conv(h, c, c, 3, cfg.first_w_bits[0], cfg.first_a_bits[0], depthwise=True)  # first block
    n.conv(h, c, c, 1, cfg.first_w_bits[1], cfg.first_a_bits[1])
    for s, stage in enumerate(sp.stages):
        for j in range(cfg.depths[s]):
            b = s * 4 + j
            k, e = cfg.kernel[b], cfg.expand[b]
            (we, wd, wp), (ae, ad, ap) = cfg.w_bits[b], cfg.a_bits[b]
            mid = divisible8(c * e)
            n.conv(h, c, mid, 1, we, ae)  # expand 1x1
            h = conv_out(h, k, stage.stride if j == 0 else 1)
            n.conv(h, mid, mid, k, wd, ad, depthwise=True)
            if stage.use_se:
                n.se(mid, divisible8(mid // 4))
            n.conv(h, mid, stage.width, 1, wp, ap)  # project 1x1
            c = stage.width
    n.conv(h, c, sp.final_expand_width, 1, cfg.final_w_bits, cfg.final_a_bits)
    n.conv(1, sp.final_expand_width, sp.feature_mix_width, 1, 8, 8, bn=False)  # after pooling
    n.conv(1, sp.feature_mix_width, sp.num_classes, 1, 8, 8, bn=False, bias=True)
    return n


def small_mixed_cfg() -> ArchConfig:
    """The smallest CIFAR subnet at resolution 24, with a different bit pair on every conv."""
    cfg = ArchConfig.smallest(CIFAR)
    pattern = [(2, 3, 4), (4, 2, 3), (3, 4, 2)]
    w = list(cfg.w_bits)
    a = list(cfg.a_bits)
    for n, i in enumerate(cfg.active_blocks()):
        w[i], a[i] = pattern[n % 3], pattern[(n + 1) % 3]
    return replace(cfg, w_bits=tuple(w), a_bits=tuple(a), first_w_bits=(3, 4), first_a_bits=(4, 2),
                   final_w_bits=3, final_a_bits=4)


def test_hand_count_matches_subnet_cost():
    cfg = small_mixed_cfg()
    assert cfg.resolution == 24 and cfg.depths == (2,) * 5 and cfg.first_w_bits == (3, 4)
    cost = subnet_cost(cfg)
    want = hand_count(cfg)
    assert cost.macs == want.macs
    assert math.isclose(cost.bitops, want.bitops, rel_tol=1e-12)
    assert cost.params == want.params
    assert cost.size_bits == want.size_bits


def test_hand_count_stem_by_itself():
    # spot check of the counting itself: stem 3 -> 16, 3x3, stride 2 on 24 px gives 12x12
    n = Count()
    n.conv(conv_out(24, 3, 2), 3, 16, 3, 8, 8)
    assert n.macs == 12 * 12 * 16 * 27 and n.bitops == n.macs and n.params == 16 * 27 + 32


def test_uniform_bits_scale_bitops(cifar_supernet):
    cfg = ArchConfig.smallest(CIFAR)
    c2, c4 = subnet_cost(cfg, cifar_supernet), subnet_cost(cfg.with_uniform_bits(4, 4), cifar_supernet)
    want2, want4 = hand_count(cfg), hand_count(cfg.with_uniform_bits(4, 4))
    assert c2.macs == c4.macs == want2.macs
    assert math.isclose(c2.bitops, want2.bitops) and math.isclose(c4.bitops, want4.bitops)
    assert c4.bitops > c2.bitops and c4.size_bits > c2.size_bits and c4.params == c2.params


def test_larger_subnets_cost_more(cifar_supernet):
    small = subnet_cost(ArchConfig.smallest(CIFAR), cifar_supernet)
    big = subnet_cost(ArchConfig.largest(CIFAR), cifar_supernet)
    assert big.macs > 5 * small.macs and big.params > small.params and big.bitops > small.bitops
    d = big.to_dict()
    assert d["mflops"] == big.macs / 1e6 and d["size_kib"] == big.size_bits / 8192


def test_info_space_counts_subnets():
    result = CliRunner().invoke(cli, ["info", "--space", "qfa-mbv3-w1.2", "--json"])
    assert result.exit_code == 0, result.output
    desc = json.loads(result.stdout)
    assert isinstance(desc["num_subnets"], int) and desc["num_subnets"] > 10**76
    # 25 resolutions x 81 first-block x 9 final-expand x 9 feature-mix x (sum over depths of 6561^d) ^ 5 stages
    per_block = 3 * 3 * 9**3
    assert desc["num_subnets"] == 25 * 81 * 9 * 9 * sum(per_block**d for d in (2, 3, 4)) ** 5
    assert desc["resolutions"] == list(range(128, 225, 4)) and len(desc["stages"]) == 5
