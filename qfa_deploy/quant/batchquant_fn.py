"""BatchQuant's training fake-quantization as one autograd Function (speed only, same numbers).

Written as plain tensor ops (``BatchQuant``'s docstring)::

    x_hat = (round_ste(clamp(x * alpha / s + z + beta, 0, qmax)) - z - beta) * s / alpha

autograd records ~12 full-size temporaries per quantizer and walks back through every one of them;
on CPU that was most of the supernet step's overhead over a plain float step. This Function runs
the very same float32 operations in the same order, in place on one buffer, so the forward is
bit-identical (``round_ste``'s ``v + (round(v) - v)`` is exactly ``round(v)``), and writes the
backward in closed form from a saved in-range mask. With ``u = x * alpha / s + z + beta`` and
``m = [0 <= u <= qmax]`` (torch.clamp passes the gradient at its bounds, so they count as inside)::

    d x_hat / dx     = m
    d x_hat / dalpha = (m * x - x_hat) / alpha
    d x_hat / dbeta  = (m - 1) * s / alpha

``s`` and ``z`` come from the detached batch range: no gradient (as before).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from qfa_deploy.quant.dot import sum_of_products

__all__ = ["batchquant_train"]


class _BatchQuantTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, z, alpha, beta, qmax: int):
        u = torch.mul(x, alpha)
        u.div_(s).add_(z).add_(beta)
        out = torch.clamp(u, 0, qmax)
        # u's buffer becomes the mask (1.0 where u was inside [0, qmax]); a float mask, because
        # bool-producing comparisons and bool * float products are ~2x slower on CPU
        mask = u.eq_(out)
        out.round_().sub_(z).sub_(beta).mul_(s).div_(alpha)
        ctx.save_for_backward(x, out, mask, s, alpha)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, out, mask, s, alpha = ctx.saved_tensors
        grad_x = grad * mask
        need_x, need_alpha, need_beta = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_alpha = grad_beta = None
        if need_alpha:
            grad_alpha = (sum_of_products(grad_x, x) - sum_of_products(grad, out)) / alpha
        if need_beta:
            grad_beta = (grad_x.sum() - grad.sum()) * s / alpha
        return (grad_x if need_x else None), None, None, grad_alpha, grad_beta, None


def batchquant_train(
    x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, qmax: int
) -> torch.Tensor:
    """BatchQuant's training forward for a given range (``s``, ``z``: 0-d, no gradient)."""
    return _BatchQuantTrain.apply(x, s, z, alpha, beta, qmax)
