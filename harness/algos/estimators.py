"""The advantage estimators of the sequence level (``advantage.baseline``), one registry entry each.

One function and one registry entry per baseline; its properties are what the rest of the house reads
(``per_token``, ``grouped``: needs rollout.group_size >= 2, ``value``: subtracts V(prompt), so the run
needs a value model, ``normalised``: already normalised, so advantage.whiten leaves it alone).
Two kinds (``Entry.props["per_token"]``):
- per completion: one return R_i = score_i - beta * sum_t kl_it minus a baseline, the same on every token
  of the completion: ``fn(returns, group_size, values=None, weights=None) -> (B,)``
  (``sequence_advantages`` calls one by name);
- per token: REINFORCE++ as published (Hu 2025, arXiv 2501.03262; OpenRLHF ``advantage_estimator``
  reinforce / reinforce_baseline, veRL ``adv_estimator`` reinforce_plus_plus / _baseline): token t's
  advantage is the return-to-go of the KL-shaped reward, then normalised over the batch's tokens.

Pure functions of tensors (torch only), shapes as in ``harness.algos.math``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.algos.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["BASELINES", "batch_normalise", "reinforce_pp", "returns_to_go", "sequence_advantages", "token_normalise"]

BASELINES = Registry("sequence baseline")

_EPS = 1e-8


def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = sum_{i >= t} gamma^(i - t) r_i over the response tokens, 0 after the last real one.

    rewards, mask: (B, T) (OpenRLHF ``get_cumulative_returns``). Returns (B, T).
    """
    import torch

    r = rewards * mask
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def token_normalise(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """(x - mu) / sigma over the batch's masked tokens, then 0 after EOS.

    unbiased=False (the default here): var = sum m (x - mu)^2 / n, A = (x - mu) * rsqrt(max(var, 1e-8))
        (OpenRLHF ``normalize``, n = the number of response tokens);
    unbiased=True: var * n / (n - 1), A = (x - mu) * rsqrt(var + 1e-8) (veRL ``masked_whiten``).
    The two differ by sqrt(n / (n - 1)) away from tiny variances (1.155 at n = 4).
    """
    import torch

    n = mask.sum()
    mu = (x * mask).sum() / n
    var = (((x - mu) ** 2) * mask).sum() / n
    if unbiased:
        scale = torch.rsqrt(var * n / (n - 1) + _EPS)
    else:
        scale = torch.rsqrt(var.clamp(min=_EPS))
    return (x - mu) * scale * mask


def reinforce_pp(scores: Tensor, kl: Tensor, mask: Tensor, beta: float, *, group_size: int = 1,
                 baseline: bool = False, gamma: float = 1.0, unbiased: bool = False) -> Tensor:
    """REINFORCE++ advantages (Hu 2025), per token.

    scores: (B,); kl: (B, T) per-token KL estimate, 0 after EOS; mask: (B, T); beta: KL coefficient
    (0 when the KL is a loss term). Completions [g k, (g + 1) k) share a prompt (k = group_size).
        s_i = score_i                     (reinforce, baseline=False)
        s_i = score_i - mean_group(score) (reinforce_baseline: the group mean of the RAW score)
        r_it = -beta kl_it, + s_i on the last real token
        A_it = normalise_batch(sum_{j >= t} gamma^(j - t) r_ij)     = s_i - beta sum_{j >= t} kl_ij at gamma = 1
    normalise_batch: ``token_normalise`` over every response token of the batch (biased n by default,
    as OpenRLHF; unbiased=True gives veRL's n - 1). Returns (B, T), 0 after EOS.
    """
    from harness.algos import math as M

    s = scores
    if baseline:
        if group_size < 2 or scores.shape[0] % group_size:
            raise ValueError(f"reinforce_pp_baseline needs group_size >= 2 dividing the batch, got {group_size}")
        g = scores.view(-1, group_size)
        s = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    rewards = M.token_rewards(kl * mask, s, mask, beta)
    return token_normalise(returns_to_go(rewards, mask, gamma), mask, unbiased)


# --------------------------------------------------------------------------- per completion
# fn(returns, group_size, values=None, weights=None) -> (B,): returns (B,) laid out group by group (completions
# [g k, (g + 1) k) share a prompt, k = group_size, B % k == 0); values (B,) V(prompt), read by "value" only;
# weights (B,) the completions' token counts, read by the REINFORCE++ ones only (None = each weighs 1).
# Broadcast to tokens with ``adv[:, None] * mask``.


def _rows(returns: Tensor, group_size: int) -> int:
    """B, after checking that returns is (B,) and holds whole groups."""
    if returns.dim() != 1:
        raise ValueError(f"returns must be 1-D (B,), got shape {tuple(returns.shape)}")
    B = returns.shape[0]
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"batch size {B} is not a multiple of group_size {group_size}")
    return B


def _groups(returns: Tensor, group_size: int, name: str) -> Tensor:
    """returns as (G, k); a group baseline needs k >= 2 (with one completion per prompt it is undefined or 0)."""
    B = _rows(returns, group_size)
    if group_size < 2:
        raise ValueError(f"baseline {name!r} needs group_size >= 2, got {group_size}")
    return returns.view(B // group_size, group_size)


def batch_normalise(x: Tensor, weights: Tensor | None) -> Tensor:
    """OpenRLHF's global advantage normalisation (``replay_buffer.normalize``) over the batch, (B,).

    OpenRLHF normalises per-token advantages over every response token of the batch, so a completion
    weighs its token count w_i (weights; None = 1 each):
        mu = sum_i w_i x_i / sum_i w_i,   var = sum_i w_i (x_i - mu)^2 / sum_i w_i   (biased)
        A_i = (x_i - mu) * rsqrt(max(var, 1e-8))
    """
    import torch

    w = torch.ones_like(x) if weights is None else weights.to(x.dtype)
    n = w.sum()
    mu = (w * x).sum() / n
    var = (w * (x - mu) ** 2).sum() / n  # biased, as OpenRLHF: sum(mask * (x - mu)^2) / count
    return (x - mu) * torch.rsqrt(var.clamp(min=_EPS))


@BASELINES.register("none", paper="no baseline: A = R", per_token=False, grouped=False, value=False, normalised=False)
def no_baseline(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = R_i."""
    _rows(returns, group_size)
    return returns.clone()


@BASELINES.register("batch_mean", paper="A = R - mean_batch R", per_token=False, grouped=False, value=False,
                    normalised=False)
def batch_mean(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = R_i - mean_j R_j over the batch."""
    _rows(returns, group_size)
    return returns - returns.mean()


@BASELINES.register("rloo", paper="leave-one-out, Ahmadian et al. 2024", verl="rloo", trl="rloo", openrlhf="rloo",
                    per_token=False, grouped=True, value=False, normalised=False)
def rloo(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = R_i - (sum_group R - R_i) / (k - 1): the leave-one-out mean of the other k - 1 completions
    (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization ...")."""
    grouped = _groups(returns, group_size, "rloo")  # (G, k)
    loo = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (G, k)
    return (grouped - loo).reshape(-1)


@BASELINES.register("group_norm", paper="GRPO, Shao et al. 2024 (DeepSeekMath)", verl="grpo", trl="grpo",
                    openrlhf="group_norm", per_token=False, grouped=True, value=False, normalised=False)
def group_norm(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = (R_i - mean_g) / (std_g + 1e-8), std_g the UNBIASED (n - 1) group std, as torch.std and TRL's
    GRPOTrainer (DeepSeekMath GRPO)."""
    grouped = _groups(returns, group_size, "group_norm")  # (G, k)
    mean = grouped.mean(dim=1, keepdim=True)  # (G, 1)
    std = grouped.std(dim=1, keepdim=True)  # (G, 1)
    return ((grouped - mean) / (std + _EPS)).reshape(-1)


@BASELINES.register("group_mean", paper="Dr. GRPO, Liu et al. 2025", verl="grpo (norm_adv_by_std_in_grpo=False)",
                    trl="dr_grpo (scale_rewards=none)", openrlhf="dr_grpo", per_token=False, grouped=True, value=False,
                    normalised=False)
def group_mean(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = R_i - mean_g: Dr. GRPO (Liu et al. 2025), GRPO without the std division (TRL scale_rewards="none",
    veRL norm_adv_by_std_in_grpo=False)."""
    grouped = _groups(returns, group_size, "group_mean")  # (G, k)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


@BASELINES.register("value", paper="A = R - V(prompt)", per_token=False, grouped=False, value=True, normalised=False)
def value_baseline(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """A_i = R_i - V(x_i), V read at the prompt's last token."""
    _rows(returns, group_size)
    if values is None or values.shape != returns.shape:
        got = None if values is None else tuple(values.shape)
        raise ValueError(f"baseline 'value' needs values of shape {tuple(returns.shape)}, got {got}")
    return returns - values


# --------------------------------------------------------------------------- per token


@BASELINES.register("reinforce_pp", paper="REINFORCE++, Hu 2025, arXiv 2501.03262", verl="reinforce_plus_plus",
                    openrlhf="reinforce", per_token=True, grouped=False, value=False, normalised=True)
def _reinforce_pp(scores, kl, mask, beta, group_size, gamma):
    """Published REINFORCE++: token return-to-go of the KL, batch-normalised (n convention)."""
    return reinforce_pp(scores, kl, mask, beta, group_size=group_size, gamma=gamma)


@BASELINES.register("reinforce_pp_baseline", paper="REINFORCE++-baseline, Hu 2025, arXiv 2501.03262",
                    verl="reinforce_plus_plus_baseline", openrlhf="reinforce_baseline", per_token=True, grouped=True,
                    value=False, normalised=True)
def _reinforce_pp_baseline(scores, kl, mask, beta, group_size, gamma):
    """Group mean of the raw score subtracted, then as ``reinforce_pp``."""
    return reinforce_pp(scores, kl, mask, beta, group_size=group_size, baseline=True, gamma=gamma)


# --------------------------------------------------------------------------- REINFORCE++ per completion
# The sequence's whole KL sum on every token (the published estimators above take the token-level
# return-to-go of the KL); the group mean is subtracted before the normalisation, as OpenRLHF's
# ``experience_maker.process_experiences`` does for "reinforce_baseline" (its comment: GRPO's / std dropped),
# so the normalisation re-centres (mu is generally != 0 under length weighting).


@BASELINES.register("reinforce_pp_seq", paper="REINFORCE++ at sequence level (the whole KL sum on every token)",
                    per_token=False, grouped=False, value=False, normalised=True)
def reinforce_pp_seq(returns: Tensor, group_size: int, values: Tensor | None = None,
                     weights: Tensor | None = None) -> Tensor:
    """A = batch_normalise(R)."""
    _rows(returns, group_size)
    return batch_normalise(returns, weights)


@BASELINES.register("reinforce_pp_baseline_seq", paper="REINFORCE++-baseline at sequence level", per_token=False,
                    grouped=True, value=False, normalised=True)
def reinforce_pp_baseline_seq(returns: Tensor, group_size: int, values: Tensor | None = None,
                              weights: Tensor | None = None) -> Tensor:
    """A = batch_normalise(R_i - mean_g R)."""
    grouped = _groups(returns, group_size, "reinforce_pp_baseline_seq")  # (G, k)
    return batch_normalise((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1), weights)


def sequence_advantages(returns: Tensor, baseline: str, group_size: int = 1, values: Tensor | None = None,
                        weights: Tensor | None = None) -> Tensor:
    """A per-completion baseline by name: ``BASELINES[baseline].fn(returns, group_size, values=, weights=)``, (B,)."""
    entry = BASELINES[baseline]
    if entry.props["per_token"]:
        raise ValueError(f"baseline {baseline!r} is per token: call BASELINES[{baseline!r}].fn with the KL and mask")
    return entry.fn(returns, group_size, values=values, weights=weights)
