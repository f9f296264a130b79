"""fold: the folded integer form equals the calibrated PyTorch eval subnet, quantizer by quantizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from export_helpers import (
    ALL_PAIRS,
    SPACE,
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
    """The folded form and the eval-mode PyTorch subnet agree bit for bit, teacher-forced (PyTorch
    run on the folded form's codes) and free-running."""
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
    # the eval-mode PyTorch conv runs the folded integer arithmetic itself: identical, not close
    assert worst == 0 and free_worst == 0
    assert torch.equal(forced_logits, logits) and torch.equal(free_logits, logits)
    # the shift path is exercised: some quantizers have a non-zero real offset
    assert any(c.act_quant.shift != 0.0 for c in folded.convs())


def test_integer_weights_and_multipliers(supernet):
    cfg = CONFIGS["random0"]
    subnet = calibrated(supernet, cfg)
    folded = fold(subnet)
    for conv, module in zip(folded.convs(), subnet.quant_convs(), strict=True):
        lo, hi = signed_range(conv.w_bits)
        assert conv.weight.dtype == np.int8 and conv.weight.min() >= lo and conv.weight.max() <= hi
        assert conv.w_bits == module.weight_quant.bits and conv.a_bits == module.act_quant.bits
        # BN is in the multiplier, not in the weights: the integers are LSQ's own
        expected = module.weight_quant.integer(module.weight.detach()).detach().numpy()
        assert np.array_equal(conv.weight, expected)
        assert conv.weight.shape == tuple(module.weight.shape)  # full kernel, never cropped
        step = float(module.weight_quant.active_step().detach())
        factor = np.ones(conv.out_channels)
        if module.bn is not None:
            bn = module.bn
            factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        np.testing.assert_allclose(conv.multiplier, conv.act_quant.scale * step * factor, rtol=1e-6)
        assert conv.padding == conv.kernel_size // 2
        assert conv.act_quant == module.act_quant.fixed()
        assert conv.accumulator_bound < 2**24  # exact in float32 in any summation order


@torch.no_grad()
def _trained_conv_float64(module, x: torch.Tensor) -> torch.Tensor:
    """What training computes, in float64: zero-padded conv of x_hat = (q - Z) s - c with w_int * d, BN, act."""
    fq = module.act_quant.fixed()
    x_hat = (quantize_codes(x, module.folded(x.shape[1], tuple(x.shape[-2:]))).double() - fq.zero_point) * fq.scale
    x_hat = x_hat - fq.shift
    w = module.weight_quant.integer(module.weight).double() * float(module.weight_quant.active_step())
    k = w.shape[-1]
    groups = x.shape[1] if module.depthwise else 1
    y = torch.nn.functional.conv2d(x_hat, w, None, module.stride, k // 2, 1, groups)
    if module.bias is not None:
        y = y + module.bias.double().view(-1, 1, 1)
    if module.bn is not None:
        bn = module.bn
        factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        y = (y - bn.running_mean.double().view(-1, 1, 1)) * factor.view(-1, 1, 1) + bn.bias.double().view(-1, 1, 1)
    return y


def test_integer_form_computes_the_trained_conv_border_included(supernet):
    """Each conv's integer form (multiplier, bias table gathered per border class) equals the
    zero-padded float conv of the dequantized input followed by BN, computed in float64."""
    cfg = CONFIGS["random1"]
    subnet = calibrated(supernet, cfg)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0])) for m in subnet.quant_convs()]
    with torch.no_grad():
        subnet(images(cfg, 4))
    for h in hooks:
        h.remove()
    bordered = 0
    for module in subnet.quant_convs():
        x = inputs[module]
        folded = module.folded(x.shape[1], tuple(x.shape[-2:]))
        bordered += folded.border_classes
        expected = _trained_conv_float64(module, x)
        acc = torch.nn.functional.conv2d(
            quantize_codes(x, folded) - folded.act_quant.zero_point,
            torch.tensor(folded.weight, dtype=torch.float32),
            None, folded.stride, folded.padding, 1, folded.groups,
        )
        assert torch.equal(acc, torch.round(acc))  # integers: exact
        got = acc * torch.from_numpy(folded.multiplier.copy()).view(-1, 1, 1) + folded.bias_map()
        assert got.shape == expected.shape
        tol = 1e-5 * float(expected.abs().max())
        np.testing.assert_allclose(got.double().numpy(), expected.detach().numpy(), rtol=1e-5, atol=tol)
    assert bordered  # padded convs with a non-zero shift were exercised


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
