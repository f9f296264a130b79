"""fold: the folded integer form equals the calibrated PyTorch eval subnet, quantizer by quantizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from export_helpers import (
    ALL_PAIRS,
    SPACE,
    argmax_agrees,
    bit_pairs,
    calibrated,
    code_diffs,
    images,
    perturbed_supernet,
    random_cfg,
)

from qfa_deploy.arch import ArchConfig
from qfa_deploy.export.verify import pytorch_codes
from qfa_deploy.fold import fold, folded_forward, quantize_codes
from qfa_deploy.quant.lsq import signed_range

RANDOM_SEEDS = (0, 1, 4, 6)
CONFIGS = {
    **{f"random{s}": random_cfg(s) for s in RANDOM_SEEDS},
    "largest-w4a4": ArchConfig.largest(SPACE, 4),
    "smallest-w2a2": ArchConfig.smallest(SPACE, 2),
    "largest-w2a4": ArchConfig.largest(SPACE).with_uniform_bits(2, 4),
    "smallest-w4a2": ArchConfig.smallest(SPACE).with_uniform_bits(4, 2),
}


@pytest.fixture(scope="module")
def supernet(cifar_supernet):
    return perturbed_supernet(cifar_supernet)


def test_configs_cover_every_bit_pair():
    covered = set().union(*(bit_pairs(CONFIGS[f"random{s}"]) for s in RANDOM_SEEDS))
    assert covered == ALL_PAIRS


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folded_equals_pytorch_eval(supernet, name, capsys):
    """Teacher-forced: PyTorch runs on the folded form's codes, so each quantizer is compared on the
    same upstream codes (within one step). Free-running figures are reported: on a deep random net
    one rounding tie can cascade, which says nothing about the fold."""
    cfg = CONFIGS[name]
    subnet = calibrated(supernet, cfg, seed=len(name))
    folded = fold(subnet)
    x = images(cfg, 24, seed=len(name))
    logits, codes = folded_forward(folded, x, return_codes=True)
    forced_logits, own_codes = pytorch_codes(subnet, x, forced_codes=codes)
    free_logits, free_codes = pytorch_codes(subnet, x)
    worst, differing, total = code_diffs(own_codes, codes)
    diff = float((forced_logits - logits).abs().max())
    free_worst, free_differing, _ = code_diffs(free_codes, codes)
    free_diff = float((free_logits - logits).abs().max())
    scale = float(free_logits.abs().max())
    with capsys.disabled():
        print(
            f"\n  fold {name:14s} forced: max|dlogit| {diff:.1e}, codes max diff {worst} ({differing}/{total}); "
            f"free-running: max|dlogit| {free_diff:.1e} (logits up to {scale:.1f}), "
            f"codes max diff {free_worst} ({free_differing} differ)"
        )
    assert len(codes) == len(folded.convs()) == len(subnet.quant_convs())
    assert worst <= 1 and differing <= 1e-5 * total
    assert diff <= 1e-4 * max(scale, 1.0)
    assert argmax_agrees(forced_logits.numpy(), logits.numpy(), diff)
    if free_worst == 0:  # no tie anywhere: then the free-running outputs agree as closely
        assert free_diff <= 1e-4 * max(scale, 1.0)
    # the shift path is exercised: some quantizers have a non-zero real offset
    assert any(c.act_quant.shift != 0.0 for c in folded.convs())


def test_integer_weights_scales_and_bias(supernet):
    cfg = CONFIGS["random0"]
    subnet = calibrated(supernet, cfg)
    folded = fold(subnet)
    for conv, module in zip(folded.convs(), subnet.quant_convs(), strict=True):
        lo, hi = signed_range(conv.w_bits)
        assert conv.weight.dtype == np.int8 and conv.weight.min() >= lo and conv.weight.max() <= hi
        assert conv.w_bits == module.weight_quant.bits and conv.a_bits == module.act_quant.bits
        # BN is in the per-channel scale, not in the weights: the integers are LSQ's own
        expected = module.weight_quant.integer(module.weight.detach()).detach().numpy()
        assert np.array_equal(conv.weight, expected)
        assert conv.weight.shape == tuple(module.weight.shape)  # full kernel, never cropped
        step = float(module.weight_quant.active_step().detach())
        if module.bn is not None:
            bn = module.bn
            factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
            bias = (bn.bias - bn.running_mean * (bn.weight / torch.sqrt(bn.running_var + bn.eps))).detach()
        else:
            factor = np.ones(conv.out_channels)
            bias = module.bias.detach() if module.bias is not None else torch.zeros(conv.out_channels)
        np.testing.assert_allclose(conv.scale, step * factor, rtol=1e-6)
        if not conv.shift_in_bias:
            np.testing.assert_allclose(conv.bias, bias.numpy(), rtol=1e-5, atol=1e-6)
        assert conv.padding == conv.kernel_size // 2
        assert conv.act_quant == module.act_quant.fixed()


def test_shift_into_bias_is_exact_and_only_for_unpadded_convs(supernet):
    cfg = CONFIGS["random1"]
    subnet = calibrated(supernet, cfg)
    explicit, folded = fold(subnet, fold_shift_into_bias=False), fold(subnet)
    moved = [c for c in folded.convs() if c.shift_in_bias]
    assert moved and all(c.padding == 0 and c.kernel_size == 1 for c in moved)
    assert not any(c.shift_in_bias for c in explicit.convs())
    x = images(cfg, 16)
    a, codes_a = folded_forward(explicit, x, return_codes=True)
    b, codes_b = folded_forward(folded, x, return_codes=True)
    assert code_diffs(codes_a, codes_b)[0] <= 1
    assert float((a - b).abs().max()) <= 1e-3 * max(float(a.abs().max()), 1.0)


def test_quantizer_codes_stay_in_the_b_bit_range(supernet):
    cfg = CONFIGS["random4"]
    folded = fold(calibrated(supernet, cfg))
    for conv in folded.convs():
        x = torch.linspace(-50, 50, 10_001)
        q = quantize_codes(x, conv)
        assert q.min() == 0 and q.max() == conv.act_quant.qmax  # the Clip (or 8-bit saturation) bites
        assert torch.equal(q, torch.round(q))


def test_folded_form_is_frozen(supernet):
    folded = fold(calibrated(supernet, CONFIGS["random6"]))
    conv = folded.stem
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv.w_bits = 2
    with pytest.raises(ValueError):
        conv.weight[0, 0, 0, 0] = 1
    assert folded.bits_summary()["convs"] == len(folded.convs())
    assert [c.name for c in folded.convs()][:3] == ["stem", "first_block/depthwise", "first_block/project"]


def test_fold_refuses_a_training_mode_subnet(supernet):
    subnet = calibrated(supernet, CONFIGS["random0"]).train()
    with pytest.raises(ValueError, match="eval"):
        fold(subnet)
