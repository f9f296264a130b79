"""fold: the folded integer form equals the calibrated PyTorch eval subnet, quantizer by quantizer."""

from __future__ import annotations

import copy
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
from qfa_deploy.calibrate import calibrate
from qfa_deploy.export.verify import pytorch_codes
from qfa_deploy.fold import fold, folded_forward, quantize_codes
from qfa_deploy.nn import layers
from qfa_deploy.nn.integer_conv import fold_conv, integer_conv
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


@torch.no_grad()
def _conv_inputs(subnet, x: torch.Tensor) -> dict:
    """The input each quantized conv of ``subnet`` sees on ``x``."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0])) for m in subnet.quant_convs()]
    try:
        subnet(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def test_integer_form_computes_the_trained_conv_border_included(supernet):
    """Each conv's integer form (multiplier, bias table gathered per border class) equals the
    zero-padded float conv of the dequantized input followed by BN, computed in float64."""
    cfg = CONFIGS["random1"]
    subnet = calibrated(supernet, cfg)
    inputs = _conv_inputs(subnet, images(cfg, 4))
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


# -- the eval conv's cached fold ---------------------------------------------------------------


def _counted_folds(monkeypatch) -> list:
    """The convs ``fold_conv`` is run on by ``QuantConv`` from now on, one entry per call."""
    calls = []

    def counted(conv, *args, **kwargs):
        calls.append(conv)
        return fold_conv(conv, *args, **kwargs)

    monkeypatch.setattr(layers, "fold_conv", counted)
    return calls


@torch.no_grad()
def _fresh(conv, x: torch.Tensor) -> torch.Tensor:
    """What the eval conv must compute on ``x``: the integer form folded now, no cache involved."""
    return integer_conv(x, fold_conv(conv, x.shape[1], tuple(x.shape[-2:])))


def test_eval_forward_folds_each_conv_once(supernet, monkeypatch):
    cfg = CONFIGS["random0"]
    subnet = calibrated(supernet, cfg)
    convs = subnet.quant_convs()
    calls = _counted_folds(monkeypatch)
    x = images(cfg, 4)
    with torch.no_grad():
        first = subnet(x)
        assert sorted(map(id, calls)) == sorted(map(id, convs))
        kept = [conv._fold_cache[2] for conv in convs]
        second = subnet(x)
    assert len(calls) == len(convs)  # none refolded
    assert all(conv._fold_cache[2] is f for conv, f in zip(convs, kept, strict=True))
    assert torch.equal(first, second)


def test_pytorch_codes_folds_each_conv_once(supernet, monkeypatch):
    """Its hook and the conv's forward share one fold (it used to fold every conv twice)."""
    cfg = CONFIGS["random0"]
    subnet = calibrated(supernet, cfg)
    calls = _counted_folds(monkeypatch)
    x = images(cfg, 4)
    logits, codes = pytorch_codes(subnet, x)
    assert len(calls) == len(subnet.quant_convs()) == len(codes)
    forced_logits, forced_codes = pytorch_codes(subnet, x, forced_codes=codes)
    assert len(calls) == len(subnet.quant_convs())  # still cached
    with torch.no_grad():
        assert torch.equal(logits, subnet(x)) and torch.equal(forced_logits, logits)
    assert code_diffs(forced_codes, codes)[0] == 0


@pytest.fixture(scope="module")
def padded_conv(supernet):
    """A calibrated eval depthwise conv with BN, a border bias table (padding, non-zero shift) and its input."""
    cfg = CONFIGS["random1"]
    subnet = calibrated(supernet, cfg)
    inputs = _conv_inputs(subnet, images(cfg, 4))
    for conv in subnet.quant_convs():
        if conv.depthwise and conv.bn is not None and conv.folded_for(inputs[conv]).border_classes:
            return conv, inputs[conv]
    raise AssertionError("no padded conv with a border bias table")


def _bump_weight(conv, x):
    conv.weight.mul_(1.5)


def _replace_weight_data(conv, x):
    conv.weight.data = conv.weight.data * 1.5  # keeps the version counter: only the address changes


def _replace_weight_data_twice(conv, x):
    # an allocator that reuses freed blocks (CUDA's) could put the second tensor where the first
    # weight was; the cache keeps that address taken
    original = conv.weight.detach().clone()
    conv.weight.data = conv.weight.data * 0.0
    conv.weight.data = original * 1.5


def _write_through_data_alias_then_eval(conv, x):
    conv.weight.data.mul_(1.5)  # bumps no version counter: .eval() is what refolds
    conv.eval()


def _bn_running_stats(conv, x):
    conv.bn.running_mean.add_(0.5)
    conv.bn.running_var.mul_(2.0)


def _bn_affine(conv, x):
    conv.bn.weight.mul_(1.5)


def _bn_eps(conv, x):
    conv.bn.eps = 0.5


def _lsq_step(conv, x):
    conv.weight_quant.step.mul_(1.5)


def _batchquant_range(conv, x):
    conv.act_quant.running_max.mul_(1.5)


def _batchquant_offset(conv, x):
    conv.act_quant.offset.add_(0.3)


def _batchquant_statistics_alone(conv, x):
    # the quantizer recalibrated on its own: the conv's train() never runs
    conv.act_quant.reset_running_stats()
    conv.act_quant.train()
    conv.act_quant(3.0 * x)
    conv.act_quant.eval()


def _calibration(conv, x):
    calibrate(conv, [3.0 * x], x.shape[-1], 1)


def _load_state_dict(conv, x):
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    state["weight"].mul_(1.5)
    conv.load_state_dict(state)


CHANGES = [
    _bump_weight, _replace_weight_data, _replace_weight_data_twice, _write_through_data_alias_then_eval,
    _bn_running_stats, _bn_affine, _bn_eps, _lsq_step, _batchquant_range, _batchquant_offset,
    _batchquant_statistics_alone, _calibration, _load_state_dict,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.lstrip("_"))
def test_eval_conv_refolds_after_any_change(padded_conv, change):
    """After a change to anything the fold reads, the eval conv computes what a fresh fold does, bit for bit."""
    conv, x = copy.deepcopy(padded_conv)
    assert conv._fold_cache is None  # copies fold afresh
    with torch.no_grad():
        before = conv(x)
        assert torch.equal(before, _fresh(conv, x))
        change(conv, x)
        after = conv(x)
    assert not conv.training
    assert not torch.equal(after, before)  # the change matters
    assert torch.equal(after, _fresh(conv, x))


def test_eval_conv_refolds_for_another_active_choice(supernet):
    """Elastic convs: a new width, kernel, weight or activation bits or input size refolds."""
    block = supernet.blocks[0]
    expand, depthwise = block.expand, block.depthwise
    saved = [(c, (c.active_out, c.active_kernel, c.weight_quant.bits, c.act_quant.bits)) for c in (expand, depthwise)]
    g = torch.Generator().manual_seed(7)
    x_expand = torch.randn(2, expand.in_channels, 8, 8, generator=g)
    x_depthwise = torch.randn(2, depthwise.in_channels, 8, 8, generator=g)
    steps = [
        (expand, (expand.out_channels, 1, 4, 4), x_expand),
        (expand, (expand.out_channels // 2, 1, 4, 4), x_expand),  # width
        (expand, (expand.out_channels // 2, 1, 2, 4), x_expand),  # weight bits
        (expand, (expand.out_channels // 2, 1, 2, 3), x_expand),  # activation bits
        (depthwise, (depthwise.out_channels, 7, 4, 4), x_depthwise),
        (depthwise, (depthwise.out_channels, 5, 4, 4), x_depthwise),  # kernel
        (depthwise, (depthwise.out_channels, 3, 4, 4), x_depthwise),
        (depthwise, (depthwise.out_channels, 3, 4, 4), x_depthwise[:, : depthwise.in_channels // 2]),  # channels
        (depthwise, (depthwise.out_channels, 3, 4, 4), x_depthwise[..., :5, :5]),  # input size
    ]
    previous = None
    try:
        with torch.no_grad():
            for conv, active, x in steps:
                conv.set_active(*active)
                out = conv(x)
                assert torch.equal(out, _fresh(conv, x)), active
                assert previous is None or previous.shape != out.shape or not torch.equal(previous, out)
                previous = out
    finally:
        for conv, active in saved:
            conv.set_active(*active)


def test_fold_cache_stays_out_of_training_and_state(padded_conv, monkeypatch):
    conv, x = copy.deepcopy(padded_conv)
    keys = set(conv.state_dict())
    with torch.no_grad():
        conv(x)
    assert conv._fold_cache is not None and set(conv.state_dict()) == keys  # a plain attribute
    assert copy.deepcopy(conv)._fold_cache is None
    calls = _counted_folds(monkeypatch)
    conv.train()
    assert conv._fold_cache is None
    conv(x).sum().backward()  # the float fake-quant path, with gradients
    assert not calls and conv.weight.grad is not None and conv.act_quant.offset.grad is not None
