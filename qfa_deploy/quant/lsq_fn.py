"""LSQ's weight fake-quantization as one autograd Function (speed only, same numbers).

Written as plain tensor ops (``LSQ``'s docstring)::

    w_hat = round_ste(clamp(w / s, qmin, qmax)) * s       # s through grad_scale(s, g)

This Function runs the same float32 operations (``round_ste`` is exactly ``round`` forward) and
writes the backward in closed form from a saved in-range mask ``m = [qmin <= w / s <= qmax]``
(torch.clamp passes the gradient at its bounds) and the integer weights ``w_int``::

    d w_hat / dw = m
    d w_hat / ds = w_int - m * w / s                      # times the LSQ gradient scale g

Per layer that is 4 kernels forward and 4 backward instead of ~10 and ~14 autograd nodes; the
supernet runs ~60 of them every step.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from qfa_deploy.quant.dot import sum_of_products

__all__ = ["lsq_quantize"]


class _LSQQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, step, qmin: int, qmax: int, grad_scale: float):
        v = torch.div(weight, step)
        w_int = torch.clamp(v, qmin, qmax)
        mask = v.eq_(w_int)  # v's buffer becomes the float mask (1.0 inside [qmin, qmax])
        w_int.round_()
        ctx.save_for_backward(weight, w_int, mask, step)
        ctx.grad_scale = grad_scale
        return w_int * step

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, w_int, mask, step = ctx.saved_tensors
        grad_w = grad * mask
        grad_step = None
        if ctx.needs_input_grad[1]:
            grad_step = (sum_of_products(grad, w_int) - sum_of_products(grad_w, weight) / step) * ctx.grad_scale
        return (grad_w if ctx.needs_input_grad[0] else None), grad_step, None, None, None


def lsq_quantize(weight: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
    """``round(clamp(weight / step, qmin, qmax)) * step``, straight-through, with the step's
    gradient multiplied by ``grad_scale`` (``step``: 0-d, positive)."""
    return _LSQQuantize.apply(weight, step, qmin, qmax, grad_scale)
