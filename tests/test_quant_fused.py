"""The fused quantizer Functions against the straightforward autograd formulas they replace:
forward bit-identical (torch.equal), gradients equal to float32 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qfa_deploy.quant.batchquant import SOFTPLUS_BETA, batch_range
from qfa_deploy.quant.batchquant_fn import batchquant_train
from qfa_deploy.quant.lsq import signed_range
from qfa_deploy.quant.lsq_fn import lsq_quantize
from qfa_deploy.quant.ste import grad_scale, round_ste


def batchquant_formula(x, s, z, alpha, beta, qmax):
    """BatchQuant's training forward exactly as it was written before the fused Function."""
    q = round_ste(torch.clamp(x * alpha / s + z + beta, 0, qmax))
    return (q - z - beta) * s / alpha


def bq_inputs(seed: int, shape, channels_last: bool, bits: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand((), generator=g) * 4 + torch.randn((), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lo, hi = batch_range(x)
    qmax = 2**bits - 1
    s = ((hi - lo) / qmax).clamp_min(1e-8)
    z = torch.clamp(torch.round(-lo / s), 0, qmax)
    a = (torch.randn((), generator=g) * 0.5).requires_grad_(True)
    beta = (torch.randn((), generator=g) * 0.4).requires_grad_(True)
    grad = torch.randn(shape, generator=g)
    if channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    return x, s, z, a, beta, qmax, grad


def grads(fn, x, s, z, a, beta, qmax, grad):
    x = x.detach().clone().requires_grad_(True)
    a_, beta_ = a.detach().clone().requires_grad_(True), beta.detach().clone().requires_grad_(True)
    out = fn(x, s, z, F.softplus(a_, beta=SOFTPLUS_BETA), beta_, qmax)
    out.backward(grad)
    return out.detach(), x.grad, a_.grad, beta_.grad


CASES = [
    (seed, shape, cl, bits)
    for seed, (shape, cl) in enumerate(
        [((8, 6, 5, 5), False), ((16, 24, 8, 8), True), ((64, 40, 4, 4), True), ((32, 10), False),
         ((4, 480, 1, 1), True), ((3, 7, 9, 2), False)]
    )
    for bits in (2, 3, 4, 8)
]


@pytest.mark.parametrize(("seed", "shape", "channels_last", "bits"), CASES)
def test_batchquant_fused_matches_formula(seed, shape, channels_last, bits):
    x, s, z, a, beta, qmax, grad = bq_inputs(100 + seed * 10 + bits, shape, channels_last, bits)
    want = grads(batchquant_formula, x, s, z, a, beta, qmax, grad)
    got = grads(batchquant_train, x, s, z, a, beta, qmax, grad)
    assert torch.equal(got[0], want[0])
    # the input gradient is exactly 0 or the incoming gradient (autograd's chain rounds it by
    # multiplying and dividing by s and alpha: a few ulps)
    assert torch.allclose(got[1], want[1], rtol=1e-5, atol=0)
    assert torch.all((got[1] == 0) | (got[1] == grad))
    # alpha's and beta's gradients are sums with cancellation: compare them to the size of their
    # summands (float32 summation error is ~1e-8 of it; a wrong term would be ~1e-2 or more)
    alpha = float(F.softplus(a.detach(), beta=SOFTPLUS_BETA))
    size_alpha = float((grad.abs() * (x.abs() + want[0].abs())).sum()) / alpha
    size_beta = float(grad.abs().sum() * s) / alpha
    assert abs(float(got[2] - want[2])) <= 1e-6 * size_alpha, (got[2], want[2])
    assert abs(float(got[3] - want[3])) <= 1e-6 * size_beta, (got[3], want[3])


def test_batchquant_fused_mask_includes_the_clamp_bounds():
    """Values landing exactly on 0 or qmax pass the gradient, like torch.clamp's backward."""
    s, z, qmax = torch.tensor(1.0), torch.tensor(0.0), 3
    alpha, beta = torch.tensor(1.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    x = torch.tensor([-0.5, 0.0, 1.2, 3.0, 3.5], requires_grad=True)
    batchquant_train(x, s, z, alpha, beta, qmax).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # d/dbeta: -s/alpha for each clamped value; d/dalpha: m * x - x_hat summed, over alpha
    assert float(beta.grad) == -2.0
    assert float(alpha.grad) == pytest.approx((0.0 + 1.2 + 3.0) - (0.0 + 0.0 + 1.0 + 3.0 + 3.0))


def test_batchquant_fused_without_input_gradient():
    """The stem quantizes the image: no gradient for x, but alpha and beta still learn."""
    x, s, z, a, beta, qmax, grad = bq_inputs(7, (4, 3, 8, 8), True, 8)
    want = grads(batchquant_formula, x, s, z, a, beta, qmax, grad)
    a_, beta_ = a.detach().clone().requires_grad_(True), beta.detach().clone().requires_grad_(True)
    out = batchquant_train(x, s, z, F.softplus(a_, beta=SOFTPLUS_BETA), beta_, qmax)
    out.backward(grad)
    assert torch.equal(out, want[0])
    assert torch.allclose(a_.grad, want[2], rtol=1e-5) and torch.allclose(beta_.grad, want[3], rtol=1e-5)


def lsq_formula(weight, step, qmin, qmax, scale):
    """LSQ's forward exactly as it was written before the fused Function."""
    step = grad_scale(step, scale)
    return round_ste(torch.clamp(weight / step, qmin, qmax)) * step


LSQ_CASES = [
    (seed, shape, cl, bits)
    for seed, (shape, cl) in enumerate(
        [((96, 16, 1, 1), True), ((336, 1, 7, 7), True), ((24, 144, 1, 1), False), ((40, 8, 3, 3), True),
         ((27,), False), ((10, 640), False)]
    )
    for bits in (2, 3, 4, 8)
]


@pytest.mark.parametrize(("seed", "shape", "channels_last", "bits"), LSQ_CASES)
def test_lsq_fused_matches_formula(seed, shape, channels_last, bits):
    qmin, qmax = signed_range(bits)
    g = torch.Generator().manual_seed(300 + seed * 10 + bits)
    w = torch.randn(shape, generator=g) * 0.1
    grad = torch.randn(shape, generator=g)
    if channels_last:
        w, grad = (t.contiguous(memory_format=torch.channels_last) for t in (w, grad))
    step0 = 2 * w.abs().mean() / qmax**0.5 * (0.2 + 0.4 * torch.rand((), generator=g))  # some clamp
    scale = 1.0 / (w.numel() * qmax) ** 0.5
    results = []
    for fn in (lsq_formula, lsq_quantize):
        w_ = w.detach().clone().requires_grad_(True)
        step = step0.detach().clone().requires_grad_(True)
        out = fn(w_, step.abs().clamp_min(1e-8), qmin, qmax, scale)
        out.backward(grad)
        results.append((out.detach(), w_.grad, step.grad))
    (got, got_w, got_s), (want, want_w, want_s) = results[1], results[0]
    assert torch.equal(got, want)
    assert torch.allclose(got_w, want_w, rtol=1e-5, atol=0)
    assert torch.all((got_w == 0) | (got_w == grad))
    v = w.double() / float(step0)
    assert ((v < qmin) | (v > qmax)).any() or bits == 8
    # the step's gradient is a sum with cancellation: compare it to the size of its summands
    size = float((grad.abs() * (v.abs() + v.round().abs())).sum()) * scale
    assert abs(float(got_s - want_s)) <= 1e-6 * size, (got_s, want_s)
