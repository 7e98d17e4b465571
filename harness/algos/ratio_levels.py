"""Importance-ratio levels (``ppo.ratio_level``), one registered function each: the ratio each token's surrogate uses.

Every level is ``fn(logprobs, old_logprobs, mask) -> (B, T)`` (logprobs with grad, old_logprobs the rollout
policy's, mask (B, T)):
    token           r_it = exp(logp_it - old_it)                                      (PPO)
    sequence        s_i  = exp( sum_t m_it (logp_it - old_it) / sum_t m_it )           (GSPO, Zheng et al. 2025:
                    the geometric mean of the token ratios), the same s_i on every token of completion i; its
                    gradient reaches every token of i through the mean (TRL importance_sampling_level="sequence")
    sequence-token  s_it = sg[s_i] * pi_it / sg[pi_it] = exp(sg[log s_i] + logp_it - sg[logp_it])
                    (GSPO-token; veRL policy_loss "gspo"): the value of s_i, the gradient of log pi_it on token
                    t alone, scaled by s_i
Padded positions get log-ratio 0 (ratio 1 at token level); an empty row gets s_i = 1. Unlike veRL the
log-ratio is not clamped.

What each level is (``Entry.props``, read by ``harness.config``): per_sequence (one ratio value per
completion), max_clip (the largest ppo.clip_eps / clip_eps_high it accepts: GSPO's ranges are ~1e-4..1e-3,
orders of magnitude below token-level ones, because s_i is a geometric mean; None = no bound beyond the
key's own), correction (``rollout.correction_level`` may name it: the rollout correction's rho = pi_old / mu
at that level, ``harness.algos.offpolicy.importance_ratio``: per token, or per completion the product of its
token ratios, as veRL's rollout_is sequence and TRL's sequence_* (not GSPO's geometric mean); sequence-token
differs from sequence in its gradient only, and rho carries none). ``CORRECTION_LEVELS`` lists those.
``Entry.trl`` is TRL GRPOConfig's ``importance_sampling_level``, ``Entry.verl`` veRL's loss mode.

Torch is imported inside the functions: ``harness.config`` reads this registry without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.algos.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CORRECTION_LEVELS", "GSPO_MAX_CLIP", "RATIO_LEVELS"]

RATIO_LEVELS = Registry("ratio level")
GSPO_MAX_CLIP = 0.01  # GSPO's clip ranges are ~1e-4..1e-3 (3e-4 / 4e-4 in the paper)
_GSPO = "GSPO, Zheng et al. 2025, arXiv 2507.18071"


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    return (logprobs - old_logprobs).masked_fill(~(mask != 0), 0.0)  # (B, T), 0 on padding


def _log_s(log_ratio: Tensor, mask: Tensor) -> Tensor:
    from harness.algos.masked import masked_mean

    return masked_mean(log_ratio, mask, dim=-1)[:, None]  # (B, 1): log s_i


@RATIO_LEVELS.register("token", paper="PPO, Schulman et al. 2017", verl="vanilla", trl="token",
                       per_sequence=False, max_clip=None, correction=True)
def token(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    import torch

    return torch.exp(_log_ratio(logprobs, old_logprobs, mask))


@RATIO_LEVELS.register("sequence", paper=_GSPO, trl="sequence", per_sequence=True, max_clip=GSPO_MAX_CLIP,
                       correction=True)
def sequence(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    import torch

    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    return torch.exp(_log_s(log_ratio, mask)).expand_as(log_ratio)


@RATIO_LEVELS.register("sequence-token", paper=_GSPO + " (GSPO-token)", verl="gspo", per_sequence=True,
                       max_clip=GSPO_MAX_CLIP, correction=False)
def sequence_token(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    import torch

    valid = mask != 0
    log_s = _log_s(_log_ratio(logprobs, old_logprobs, mask), mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    own = torch.where(valid, logprobs - logprobs.detach(), zero)
    return torch.exp(log_s.detach() + own)  # value s_i, d/dlogp_it = s_i


# the levels a rollout correction's rho is taken at (``rollout.correction_level``)
CORRECTION_LEVELS = tuple(name for name, e in RATIO_LEVELS.items() if e.props["correction"])
