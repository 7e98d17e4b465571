"""Masked statistics of tensors: the mean, variance and whitening over the real (unpadded) response tokens.

Pure functions of tensors (torch only), below every option registry and ``harness.ppo.math`` (which
re-exports them). A ``mask`` is 1 (or True) on real response tokens and 0 on padding; bool or float.
Source: TRL ``experimental/ppo/ppo_trainer.py`` (masked mean / var / whiten).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EPS", "masked_mean", "masked_terms", "masked_var", "masked_whiten"]

# Added to the variance before rsqrt in whitening (TRL masked_whiten) and to the
# group std in group_norm (TRL GRPOTrainer / DeepSeekMath): keeps a constant
# batch / group finite instead of dividing by zero.
EPS = 1e-8


def masked_terms(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """x * mask with masked-out positions forced to exactly 0, and the mask broadcast to it.

    torch.where (rather than a bare product) keeps a non-finite value at a padded
    position (e.g. a -inf logprob) from turning the sum into NaN: 0 * inf = nan.
    """
    m = mask.to(x.dtype)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm, torch.broadcast_to(m, xm.shape)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is non-zero.

    x: any shape; mask: broadcastable to x (bool or float weights).
    dim: None -> scalar over all elements; an int / tuple -> reduced over those dims.
    Returns 0 (not NaN) wherever the mask sums to 0.
    """
    # mean = sum(x * m) / sum(m)      (TRL masked_mean, made safe for an empty mask)
    xm, m = masked_terms(x, mask)
    num = xm.sum() if dim is None else xm.sum(dim=dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    empty = den == 0
    return torch.where(empty, torch.zeros_like(num), num / torch.where(empty, torch.ones_like(den), den))


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all masked elements (a scalar).

    x: any shape; mask: broadcastable to x.
    unbiased=True applies Bessel's correction n / (n - 1) with n = sum(mask), as TRL's
    masked_var; it raises ValueError when n < 2 (TRL would divide by zero and return NaN).
    unbiased=False with an empty mask returns 0.
    """
    # var = mean_m((x - mean_m(x))^2) * n / (n - 1)      (TRL masked_var)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = torch.broadcast_to(mask.to(x.dtype), torch.broadcast_shapes(x.shape, mask.shape)).sum()
        if n < 2:  # one host sync; same as TRL's `if mask_sum == 0` check
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 masked elements, got {float(n):g}")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its masked elements.

    x: any shape (typically (B, T) advantages); mask: broadcastable to x. Returns x's shape.
    As in TRL, the same affine map is applied to EVERY position: positions where mask
    is 0 are transformed too, not zeroed. Multiply by the mask if you need zeros there.
    shift_mean=False adds the mean back (only rescales), as TRL does for rewards.
    """
    # x_w = (x - mu) / sqrt(var + 1e-8);  if not shift_mean: x_w += mu
    # (TRL masked_whiten; advantage whitening: "The N implementation details of RLHF with PPO")
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
