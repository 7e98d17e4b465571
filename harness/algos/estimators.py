"""The advantage estimators of the sequence level (``advantage.baseline``), one registry entry each.

One function and one registry entry per baseline; its properties are what the rest of the house reads
(``per_token``, ``grouped``: needs rollout.group_size >= 2, ``value``: subtracts V(prompt), so the run
needs a value model, ``normalised``: already normalised, so advantage.whiten leaves it alone).
Two kinds (``Entry.props["per_token"]``):
- per completion: one return R_i = score_i - beta * sum_t kl_it minus a baseline, the same on every token
  of the completion (``harness.algos.math.sequence_advantages``);
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

__all__ = ["BASELINES", "reinforce_pp", "returns_to_go", "token_normalise"]

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


# --------------------------------------------------------------------------- the registry


def _per_completion(name: str):
    def fn(returns: Tensor, group_size: int, values: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        from harness.algos import math as M

        return M.sequence_advantages(returns, name, group_size, values=values, weights=weights)

    fn.__name__ = f"baseline_{name}"
    fn.__doc__ = f"``math.sequence_advantages(R, {name!r})`` (B,)."
    return fn


_SEQ = (
    ("none", "no baseline: A = R", None, None, None, False),
    ("batch_mean", "A = R - mean_batch R", None, None, None, False),
    ("rloo", "leave-one-out, Ahmadian et al. 2024", "rloo", "rloo", "rloo", True),
    ("group_norm", "GRPO, Shao et al. 2024 (DeepSeekMath)", "grpo", "grpo", "group_norm", True),
    ("group_mean", "Dr. GRPO, Liu et al. 2025", "grpo (norm_adv_by_std_in_grpo=False)", "dr_grpo (scale_rewards=none)",
     "dr_grpo", True),
)
for _name, _paper, _verl, _trl, _orl, _grouped in _SEQ:
    BASELINES.register(_name, paper=_paper, verl=_verl, trl=_trl, openrlhf=_orl, per_token=False,
                       grouped=_grouped, value=False, normalised=False)(_per_completion(_name))
BASELINES.register("value", paper="A = R - V(prompt)", per_token=False, grouped=False, value=True,
                   normalised=False)(_per_completion("value"))


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


BASELINES.register("reinforce_pp_seq", paper="REINFORCE++ at sequence level (the whole KL sum on every token)",
                   per_token=False, grouped=False, value=False, normalised=True)(_per_completion("reinforce_pp_seq"))
BASELINES.register("reinforce_pp_baseline_seq", paper="REINFORCE++-baseline at sequence level", per_token=False,
                   grouped=True, value=False, normalised=True)(_per_completion("reinforce_pp_baseline_seq"))
