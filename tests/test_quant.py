"""The quantizers against the formulas of DESIGN.md, computed independently here (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from qfa_deploy.quant import LSQ, BatchQuant

LN2 = math.log(2.0)


def softplus_ln2(a: float) -> float:
    """softplus with beta = ln 2: log(1 + exp(ln2 * a)) / ln2, equal to 1 at a = 0."""
    return math.log1p(math.exp(LN2 * a)) / LN2


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def channel_range(x: torch.Tensor) -> tuple[float, float]:
    """Per-channel min/max averaged over channels, widened to include 0 (DESIGN.md)."""
    x = x.double()
    if x.ndim == 4:
        x = x.transpose(0, 1).reshape(x.shape[1], -1)
    else:
        x = x.t()
    lo = sum(float(c.min()) for c in x) / len(x)
    hi = sum(float(c.max()) for c in x) / len(x)
    return min(lo, 0.0), max(hi, 0.0)


def bq_reference(x: torch.Tensor, bits: int, lo: float, hi: float, a: float, beta: float) -> dict:
    """BatchQuant in float64 for a given range: s, z, alpha, the pre-rounding value v and x_hat."""
    qmax = 2**bits - 1
    s = (hi - lo) / qmax
    z = min(max(round(-lo / s), 0), qmax)
    alpha = softplus_ln2(a)
    v = x.double() * alpha / s + z + beta
    q = torch.clamp(torch.round(v), 0, qmax)
    return {"s": s, "z": z, "alpha": alpha, "v": v, "q": q, "x_hat": (q - z - beta) * s / alpha, "qmax": qmax}


def near_tie(v: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return ((v - torch.floor(v)) - 0.5).abs() < eps


def batchquant(bits: int, a: float = 0.0, beta: float = 0.0, momentum: float | None = 0.1) -> BatchQuant:
    q = BatchQuant((2, 3, 4), momentum=momentum)
    q.bits = bits
    with torch.no_grad():
        i = q.bit_choices.index(bits)
        q.scale_param[i] = a
        q.offset[i] = beta
    return q


def sample_input(seed: int, shape=(8, 6, 5, 5), shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels with different ranges, so per-channel averaging differs from the global min/max
    scales = torch.linspace(0.5, 3.0, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    return torch.randn(shape, generator=g) * scales + shift


# -- BatchQuant, training ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "a", "beta", "shape", "shift"),
    [
        (2, 0.0, 0.0, (8, 6, 5, 5), 0.0),
        (3, 0.0, 0.0, (8, 6, 5, 5), 0.0),
        (4, 0.0, 0.0, (8, 6, 5, 5), 0.0),
        (4, 0.7, 0.3, (8, 6, 5, 5), 0.0),
        (3, -0.5, -0.45, (8, 6, 5, 5), 0.0),
        (4, 0.2, 0.1, (8, 6, 5, 5), 6.0),  # all positive: range widened down to 0
        (2, 0.0, 0.2, (8, 6, 5, 5), -6.0),  # all negative: range widened up to 0
        (3, 0.4, -0.2, (32, 10), 0.5),  # 2-D input (after pooling): channels are dim 1
    ],
)
def test_batchquant_training_forward_is_the_formula(bits, a, beta, shape, shift):
    x = sample_input(bits, shape, shift)
    q = batchquant(bits, a, beta).train()
    got = q(x).double()
    lo, hi = channel_range(x)
    assert lo <= 0.0 <= hi
    ref = bq_reference(x, bits, lo, hi, a, beta)
    assert float(q.alpha().detach()) == pytest.approx(ref["alpha"], rel=1e-6)
    close = (got - ref["x_hat"]).abs() <= 1e-5 * (1 + ref["x_hat"].abs())
    ties = near_tie(ref["v"])
    assert bool((close | ties).all()), (got - ref["x_hat"]).abs().max()
    assert int(ties.sum()) <= 2
    # the output lives on the (qmax + 1)-level grid of the formula
    levels = got * ref["alpha"] / ref["s"] + ref["z"] + beta
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.round().min() >= 0 and levels.round().max() <= ref["qmax"]


def test_batchquant_alpha_is_one_at_init():
    q = BatchQuant((2, 3, 4))
    for bits in (2, 3, 4):
        q.bits = bits
        assert float(q.alpha().detach()) == pytest.approx(1.0, abs=1e-7)
        assert float(q.offset.detach()[q.bit_choices.index(bits)]) == 0.0


def test_batchquant_full_precision_is_identity_but_still_tracks():
    q = batchquant(4).train()
    q.bits = None
    x = sample_input(0)
    assert torch.equal(q(x), x)
    assert float(q.running_min) == pytest.approx(channel_range(x)[0], rel=1e-6)


@pytest.mark.parametrize(("bits", "a", "beta"), [(2, 0.0, 0.0), (3, 0.6, 0.35), (4, -0.3, -0.2)])
def test_batchquant_straight_through_gradients(bits, a, beta):
    x = (sample_input(10 + bits) * 1.5).requires_grad_(True)
    q = batchquant(bits, a, beta).train()
    out = q(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * g).sum().backward()

    lo, hi = channel_range(x.detach())
    ref = bq_reference(x.detach(), bits, lo, hi, a, beta)
    v, qmax = ref["v"], ref["qmax"]
    # inside the quantization range, values that round to the end levels 0 and qmax included
    inside = (v > 1e-3) & (v < qmax - 1e-3)
    outside = (v < -1e-3) | (v > qmax + 1e-3)
    assert inside.any() and outside.any()
    assert (((v > 0) & (v < 0.5)) | ((v > qmax - 0.5) & (v < qmax))).any()  # end levels are exercised
    # d loss / dx = g * (d x_hat / dx) with d x_hat / dx = 1 inside the range and 0 outside
    assert torch.allclose(x.grad[inside], g[inside], rtol=1e-5, atol=0)
    assert torch.all(x.grad[outside] == 0.0)

    # d x_hat / d beta: 0 inside the range (straight through), -s/alpha where q is clamped;
    # d x_hat / d alpha: x/alpha - x_hat/alpha inside, -x_hat/alpha where clamped.
    gd, x_hat, alpha, s = g.double(), ref["x_hat"], ref["alpha"], ref["s"]
    passes = (v > 0) & (v < qmax)
    d_beta = torch.where(passes, torch.zeros_like(v), torch.full_like(v, -s / alpha))
    d_alpha = torch.where(passes, x.detach().double() / alpha, torch.zeros_like(v)) - x_hat / alpha
    i = q.bit_choices.index(bits)
    expect_offset = float((gd * d_beta).sum())
    expect_scale = float((gd * d_alpha).sum()) * sigmoid(LN2 * a)  # d softplus_ln2(a)/da
    assert float(q.offset.grad[i]) == pytest.approx(expect_offset, rel=1e-3, abs=1e-4)
    assert float(q.scale_param.grad[i]) == pytest.approx(expect_scale, rel=1e-3, abs=1e-4)
    assert abs(expect_offset) > 1e-3 and abs(expect_scale) > 1e-3
    # the other bit choices' parameters are untouched
    others = [j for j in range(3) if j != i]
    assert torch.all(q.offset.grad[others] == 0) and torch.all(q.scale_param.grad[others] == 0)


def test_batchquant_range_is_a_statistic_not_a_parameter():
    """Scaling the batch changes the output only through the range: no gradient flows into it."""
    x = sample_input(3).requires_grad_(True)
    q = batchquant(4).train()
    q(x).pow(2).sum().backward()
    lo, hi = channel_range(x.detach())
    v = bq_reference(x.detach(), 4, lo, hi, 0.0, 0.0)["v"]
    # d/dx of x_hat^2 = 2 x_hat inside the range: the range's dependence on x would add terms
    inside = (v > 0.5) & (v < 14.5)
    out = q(x).detach()
    assert torch.allclose(x.grad[inside], 2 * out[inside], atol=1e-6)


# -- BatchQuant, running statistics and evaluation -------------------------------------------------


def test_batchquant_running_stats_cumulative_when_momentum_none():
    q = batchquant(3, momentum=None).train()
    batches = [sample_input(20 + i, shift=0.3 * i) * (1 + i) for i in range(4)]
    ranges = []
    for x in batches:
        q(x)
        ranges.append(channel_range(x))
    assert int(q.num_batches_tracked) == 4
    assert float(q.running_min) == pytest.approx(sum(r[0] for r in ranges) / 4, rel=1e-5)
    assert float(q.running_max) == pytest.approx(sum(r[1] for r in ranges) / 4, rel=1e-5)


def test_batchquant_running_stats_exponential_with_momentum():
    q = batchquant(3, momentum=0.25).train()
    batches = [sample_input(30 + i) * (1 + i) for i in range(3)]
    lo = hi = None
    for x in batches:
        q(x)
        blo, bhi = channel_range(x)
        # the first batch sets the range; later ones move it by the momentum
        lo = blo if lo is None else 0.75 * lo + 0.25 * blo
        hi = bhi if hi is None else 0.75 * hi + 0.25 * bhi
    assert float(q.running_min) == pytest.approx(lo, rel=1e-5)
    assert float(q.running_max) == pytest.approx(hi, rel=1e-5)


RUNNING_CASES = [(2, 0.0, 0.0), (3, 0.5, 0.4), (4, -0.4, -0.3), (2, 0.1, -7.0)]


@pytest.mark.parametrize(("bits", "a", "beta"), RUNNING_CASES)
def test_batchquant_eval_uses_running_range(bits, a, beta):
    q = batchquant(bits, a, beta).train()
    for i in range(3):
        q(sample_input(40 + i))
    q.eval()
    lo, hi = float(q.running_min), float(q.running_max)
    x = sample_input(50) * 3.0  # a batch whose own range is far from the running one
    before = (q.running_min.clone(), q.running_max.clone(), q.num_batches_tracked.clone())
    got = q(x).double()
    assert torch.equal(before[0], q.running_min) and torch.equal(before[2], q.num_batches_tracked)

    ref = bq_reference(x, bits, lo, hi, a, beta)
    step = ref["s"] / ref["alpha"]
    err = (got - ref["x_hat"]).abs()
    assert float(err.max()) <= step * (1 + 1e-4)
    assert float((err < 1e-4 * step).double().mean()) > 0.99  # identical but for rounding near ties
    blo, bhi = channel_range(x)
    batch_ref = bq_reference(x, bits, blo, bhi, a, beta)
    assert float((got - batch_ref["x_hat"]).abs().max()) > 2 * step  # not the batch's own range


@pytest.mark.parametrize(("bits", "a", "beta"), [*RUNNING_CASES, (4, 0.0, 30.0)])  # 30: Z clamps to qmax
def test_batchquant_fixed_constants_reproduce_eval(bits, a, beta):
    q = batchquant(bits, a, beta).train()
    for i in range(2):
        q(sample_input(60 + i))
    q.eval()
    f = q.fixed()
    lo, hi = float(q.running_min), float(q.running_max)
    ref = bq_reference(torch.zeros(1), bits, lo, hi, a, beta)
    assert f.bits == bits and f.qmax == 2**bits - 1
    assert isinstance(f.zero_point, int) and 0 <= f.zero_point <= f.qmax
    assert f.zero_point == min(max(round(ref["z"] + beta), 0), f.qmax)
    assert f.scale == pytest.approx(ref["s"] / ref["alpha"], rel=1e-6)
    # z + beta = Z + shift / scale: the real offset is split exactly, nothing rounded away
    assert f.zero_point + f.shift / f.scale == pytest.approx(ref["z"] + beta, abs=1e-5)

    x = sample_input(70) * 2.0
    y = q(x)
    # ONNX QuantizeLinear / DequantizeLinear with these constants, around the shift
    q_int = torch.clamp(torch.round((x + f.shift) / f.scale) + f.zero_point, 0, f.qmax)
    y_onnx = (q_int - f.zero_point) * f.scale - f.shift
    assert torch.allclose(y, y_onnx, atol=1e-6 * f.scale * f.qmax)
    levels = (y.double() + f.shift) / f.scale + f.zero_point
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.round().min() >= 0 and levels.round().max() <= f.qmax


def test_batchquant_single_keeps_parameters_and_range():
    q = batchquant(3, 0.3, 0.2).train()
    q(sample_input(80))
    q.eval()
    one = q.single(3).eval()
    x = sample_input(81)
    assert one.bit_choices == (3,)
    assert torch.equal(one(x), q(x))
    assert one.fixed() == q.fixed()


# -- LSQ ---------------------------------------------------------------------------------------


def lsq(bits: int, step: float) -> LSQ:
    q = LSQ((2, 3, 4))
    q.bits = bits
    with torch.no_grad():
        q.step[q.bit_choices.index(bits)] = step
    return q


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_forward_is_the_signed_grid(bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(bits)
    for trial in range(40):
        numel = [27, 96, 400, 1152][trial % 4]
        w = torch.randn(numel, generator=g) * 0.1
        s = float(torch.empty(()).uniform_(0.01, 0.1, generator=g))
        q = lsq(bits, s)
        got = q(w)
        s32 = torch.tensor(s, dtype=torch.float32)
        ref = torch.round(torch.clamp(w.double() / s32.double(), qmin, qmax)) * s32.double()
        ties = near_tie(w.double() / s32.double())
        assert bool((((got.double() - ref).abs() < 1e-7) | ties).all())
        # the forward is exactly the integer weight times the step the folder stores
        assert torch.equal(got, q.integer(w) * q.active_step())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_integer_stays_on_the_grid(bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = torch.randn(64, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    w.view(-1)[:2] = torch.tensor([9.0, -9.0])  # outliers: both ends of the grid are reached
    q = LSQ((2, 3, 4))
    q.init_steps(w)
    q.bits = bits
    wi = q.integer(w)
    assert torch.equal(wi, wi.round())
    assert int(wi.min()) == qmin and int(wi.max()) == qmax  # both ends used, never beyond
    assert len(torch.unique(wi)) == 2**bits
    # init: 2 mean|w| / sqrt(qmax)
    init = 2 * float(w.abs().mean()) / math.sqrt(qmax)
    assert float(q.active_step().detach()) == pytest.approx(init, rel=1e-5)


@pytest.mark.parametrize(("bits", "step"), [(2, 0.05), (3, 0.02), (4, 0.013)])
def test_lsq_step_gradient(bits, step):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    gen = torch.Generator().manual_seed(bits)
    w = (torch.randn(6, 4, 3, 3, generator=gen) * 0.06).requires_grad_(True)
    g = torch.randn(w.shape, generator=gen)
    q = lsq(bits, step)
    (q(w) * g).sum().backward()

    # hand computation (LSQ, Esser et al. eq. 3): d w_hat / d s = -v + round(v) inside the range,
    # qmin below and qmax above, with the gradient scale 1 / sqrt(numel * qmax)
    v = w.detach().double() / step
    per_elem = torch.where(v <= qmin, float(qmin), torch.where(v >= qmax, float(qmax), torch.round(v) - v))
    expect = float((g.double() * per_elem).sum()) / math.sqrt(w.numel() * qmax)
    i = q.bit_choices.index(bits)
    assert float(q.step.grad[i]) == pytest.approx(expect, rel=1e-4, abs=1e-7)
    assert abs(expect) > 1e-4
    assert all(float(q.step.grad[j]) == 0.0 for j in range(3) if j != i)
    # straight-through for the weight: 1 inside the clamp range, 0 outside
    inside, outside = (v > qmin) & (v < qmax), (v < qmin) | (v > qmax)
    assert inside.any() and outside.any()
    assert torch.allclose(w.grad[inside], g[inside], rtol=1e-5, atol=0)
    assert torch.all(w.grad[outside] == 0)


def test_lsq_single_and_full_precision():
    w = torch.randn(16, 4, 1, 1, generator=torch.Generator().manual_seed(2))
    q = LSQ((2, 3, 4))
    q.init_steps(w)
    q.bits = 3
    one = q.single(3)
    assert torch.equal(one(w), q(w)) and torch.equal(one.integer(w), q.integer(w))
    q.bits = None
    assert torch.equal(q(w), w)
