"""Rollout correction: importance weights between the policy that sampled a batch and the one that trains on it.

The behaviour policy mu sampled the batch (``rollout.staleness`` iterations old, and / or through the
sampling code path: the KV cache, the CPU fast path, bf16); pi_old is the training policy at the start
of the update, its logprobs recomputed by the training forward. Each correction (``rollout.correction``,
one registered function each, as veRL ``rollout_correction``, TRL ``vllm_importance_sampling_mode``,
OpenRLHF ``is_correction_type``) turns the ratio rho = pi_old / mu into a per-token factor w of the
policy loss and a mask of the tokens that stay in it:

    token level:    rho_t = exp(old_t - mu_t)
    sequence level: rho_i = exp(sum_t m_t (old_t - mu_t)), the same on every token of completion i
    (log rho clamped to [-20, 20] before exp, veRL's safety bound).

Pure functions of tensors (torch only); shapes (B, T) as in ``harness.algos.math``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.algos.ratio_levels import CORRECTION_LEVELS
from harness.algos.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CORRECTIONS", "correct", "importance_ratio", "mismatch_metrics"]

CORRECTIONS = Registry("rollout correction")
_BOUND = 20.0


def importance_ratio(old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, level: str) -> Tensor:
    """rho = pi_old / mu at token level (B, T) or sequence level (B, T, the product broadcast); 1 on padding."""
    import torch

    d = (old_logprobs - behaviour_logprobs).masked_fill(mask == 0, 0.0)
    if level == "sequence":
        d = d.sum(-1, keepdim=True).expand_as(d)
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r}; expected one of {' / '.join(CORRECTION_LEVELS)}")
    return torch.exp(d.clamp(-_BOUND, _BOUND)).masked_fill(mask == 0, 1.0)


@CORRECTIONS.register("none", paper="no correction: the batch is treated as sampled by pi_old", verl="(off)",
                      trl="vllm_importance_sampling_correction=False", openrlhf="(off)", levels=("token", "sequence"),
                      low=None, high=None)
def _none(rho: Tensor, low: float | None, high: float | None) -> tuple[Tensor, Tensor]:
    import torch

    return torch.ones_like(rho), torch.ones_like(rho, dtype=torch.bool)


@CORRECTIONS.register("tis", paper="truncated IS, Yao et al. 2025 (Your efficient RL framework secretly brings you "
                      "off-policy RL training)", verl="rollout_is token / sequence", trl="token_truncate / "
                      "sequence_truncate", openrlhf="tis", levels=("token", "sequence"), low=None, high=2.0)
def _tis(rho: Tensor, low: float | None, high: float | None) -> tuple[Tensor, Tensor]:
    """w = clamp(rho, low, high) (no lower clamp when low is null); every token stays."""
    import torch

    return rho.clamp(min=low, max=high), torch.ones_like(rho, dtype=torch.bool)


@CORRECTIONS.register("mis", paper="masked IS (rejection of outlying weights), Yao et al. 2025; veRL rollout_rs",
                      verl="rollout_rs token / sequence", trl="token_mask / sequence_mask", openrlhf="seq-mask-tis",
                      levels=("token", "sequence"), low=None, high=2.0)
def _mis(rho: Tensor, low: float | None, high: float | None) -> tuple[Tensor, Tensor]:
    """Tokens (sequences) with rho > high, or rho < low when low is set, leave the loss; the others keep w = rho."""
    import torch

    keep = rho <= high
    if low is not None:
        keep &= rho >= low
    return torch.where(keep, rho, torch.zeros_like(rho)), keep


@CORRECTIONS.register("icepop", paper="IcePop, Ling Team 2025 (Every Step Evolves: Ring-1T), two-sided token masking",
                      openrlhf="icepop", levels=("token",), low=0.5, high=5.0)
def _icepop(rho: Tensor, low: float | None, high: float | None) -> tuple[Tensor, Tensor]:
    """Token level, two-sided: tokens with rho outside [low, high] leave the loss, the others keep w = rho."""
    import torch

    keep = (rho >= low) & (rho <= high)
    return torch.where(keep, rho, torch.zeros_like(rho)), keep


def correct(name: str, rho: Tensor, low: float | None = None, high: float | None = None) -> tuple[Tensor, Tensor]:
    """(w, keep) of correction ``name``: w (B, T) the loss factor, keep (B, T) bool; null thresholds = the
    correction's defaults (``Entry.props`` low / high)."""
    e = CORRECTIONS[name]
    low = e.props["low"] if low is None else low
    high = e.props["high"] if high is None else high
    return e.fn(rho, low, high)


def mismatch_metrics(old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, rho: Tensor, w: Tensor,
                     keep: Tensor, correction: str) -> dict[str, float]:
    """The iteration's offpolicy/* metrics (harness/schema.py), per token of the masked response:

    kl_k1 = mean_t (mu_t - old_t)                          (k1 of KL(mu || pi_old), samples from mu)
    kl_k3 = mean_t (rho_t - 1 - log rho_t), rho_t = pi_old / mu per token    (k3, >= 0)
    is_mean / is_max = mean / max of rho before the correction (its level);
    is_truncated_frac = share of tokens whose weight the correction changed while keeping them (0 for none);
    is_masked_frac    = share of tokens the correction took out of the loss.
    """
    import torch

    from harness.algos import math as M

    m = mask != 0
    d = (old_logprobs - behaviour_logprobs).masked_fill(~m, 0.0)
    k3 = torch.expm1(d) - d
    f = rho.dtype
    changed = keep & (w != rho) & (correction != "none")
    return {
        "offpolicy/kl_k1": float(M.masked_mean(-d, mask)),
        "offpolicy/kl_k3": float(M.masked_mean(k3, mask)),
        "offpolicy/is_mean": float(M.masked_mean(rho, mask)),
        "offpolicy/is_max": float(rho[m].max()) if m.any() else 1.0,
        "offpolicy/is_truncated_frac": float(M.masked_mean(changed.to(f), mask)),
        "offpolicy/is_masked_frac": float(M.masked_mean((~keep).to(f), mask)),
    }
