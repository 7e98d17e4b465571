"""Policy-loss modes (``ppo.loss_mode``), one registered function each (veRL ``policy_loss.loss_mode``).

Every mode has one signature: ``fn(logprobs, old_logprobs, advantages, mask, **kw) -> (loss, stats)``
with the tensors of ``harness.ppo.math.policy_loss`` ((B, T); advantages (B, T) or (B, 1)), and the
keywords of ``harness.ppo.update.policy_loss_kwargs``: clip_eps, clip_eps_high, ratio_level, dual_clip,
agg, norm_length, weights (the rollout correction's per-token factors, no gradient; None = 1), the
mode's own options (sapo_tau_pos / sapo_tau_neg, cov_ratio, clip_cov_lb / clip_cov_ub, kl_cov_coef) and
generator (clip_cov's random choice). A mode reads what it needs and ignores the rest.

stats, detached 0-dim tensors, shares of the masked tokens: approxkl, clipfrac, clipfrac_low,
clipfrac_high, ratio_mean (as ``math.policy_loss``); dualclip_frac (vanilla with dual_clip); cov_frac
(clip_cov / kl_cov: the share of tokens the covariance rule selected).

What each mode may combine with (``Entry.props``, read by ``harness.config``):
ratio_levels (the ppo.ratio_level values it accepts), clip_high (reads ppo.clip_eps_high),
dual_clip (accepts ppo.dual_clip), aggs (the loss.agg values it accepts; None = all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.ppo.ratio_levels import RATIO_LEVELS
from harness.ppo.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["POLICY_LOSSES", "policy_loss"]

POLICY_LOSSES = Registry("policy loss mode")

# defaults of the mode options (the papers' / veRL's), used when the config leaves them null
SAPO_TAU_POS, SAPO_TAU_NEG = 1.0, 1.05  # TRL sapo_temperature_pos / _neg, veRL tau_pos / tau_neg
COV_RATIO = 2e-4  # veRL clip_cov_ratio / kl_cov_ratio
CLIP_COV_LB, CLIP_COV_UB = 1.0, 5.0  # veRL clip_cov_lb / clip_cov_ub
KL_COV_COEF = 1.0  # veRL ppo_kl_coef


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *args,
                mode: str = "vanilla", **kw) -> tuple[Tensor, dict[str, Tensor]]:
    """The registered function of ``mode`` on these tensors (see the module docstring).

    Called as ``math.policy_loss`` is (clip_eps and agg positional or by keyword), plus ``mode``, the mode's
    options and ``weights``. vanilla hands ``math.policy_loss`` exactly its own arguments (``weights`` only
    when set, the mode options dropped), so the default is today's loss, call for call."""
    from harness.ppo import math as M

    if mode == "vanilla":
        extra = ("sapo_tau_pos", "sapo_tau_neg", "cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_coef", "generator")
        kw = {k: v for k, v in kw.items() if k not in extra and not (k == "weights" and v is None)}
        return M.policy_loss(logprobs, old_logprobs, advantages, mask, *args, **kw)
    kw.update(zip(("clip_eps", "agg"), args, strict=False))
    return POLICY_LOSSES[mode].fn(logprobs, old_logprobs, advantages, mask, **kw)


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    return (logprobs - old_logprobs).masked_fill(mask == 0, 0.0)


def _finish(loss_mat: Tensor, mask: Tensor, kw: dict, stats: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights, then aggregation (``math.aggregate``); the stats detached."""
    from harness.ppo import math as M

    w = kw.get("weights")
    if w is not None:
        loss_mat = loss_mat * w.detach()
    loss = M.aggregate(loss_mat, mask, kw["agg"], kw.get("norm_length"))
    return loss, {k: v.detach() for k, v in stats.items()}


def _base_stats(log_ratio: Tensor, ratio: Tensor, mask: Tensor, low: Tensor, high: Tensor) -> dict[str, Tensor]:
    from harness.ppo import math as M

    f = ratio.dtype
    lo, hi = M.masked_mean(low.to(f), mask), M.masked_mean(high.to(f), mask)
    return {"approxkl": 0.5 * M.masked_mean(log_ratio.detach() ** 2, mask), "clipfrac": lo + hi,
            "clipfrac_low": lo, "clipfrac_high": hi, "ratio_mean": M.masked_mean(ratio.detach(), mask)}


@POLICY_LOSSES.register("vanilla", paper="PPO clipped surrogate, Schulman et al. 2017 (+ GSPO ratio levels, "
                        "clip-higher, dual clip)", verl="vanilla", trl="grpo / bnpo / dr_grpo / dapo",
                        ratio_levels=RATIO_LEVELS.names(), clip_high=True, dual_clip=True, aggs=None)
def vanilla(logprobs, old_logprobs, advantages, mask, **kw):
    """``math.policy_loss``: max(-A r, -A clip(r, 1 - eps, 1 + eps_high)) [dual clip] at the configured ratio level
    (``policy_loss`` calls ``math.policy_loss`` itself for this mode, with the caller's arguments as given)."""
    return policy_loss(logprobs, old_logprobs, advantages, mask, mode="vanilla", **kw)


@POLICY_LOSSES.register("cispo", paper="CISPO, MiniMax-M1, arXiv 2506.13585", verl="cispo", trl="cispo",
                        ratio_levels=("token",), clip_high=True, dual_clip=False, aggs=None)
def cispo(logprobs, old_logprobs, advantages, mask, **kw):
    """l_t = -sg[clip(r_t, 1 - eps, 1 + eps_high)] A_t log pi_t (veRL compute_policy_loss_cispo).

    The clipped weight carries no gradient, so every token keeps the REINFORCE gradient -w A grad log pi
    (PPO's clip zeroes the gradient of clipped tokens). TRL's cispo clips r at epsilon_high itself (an
    absolute cap, no lower bound); here as veRL: both ranges relative to 1.
    """
    import torch

    eps_lo = kw["clip_eps"]
    eps_hi = kw.get("clip_eps_high") or eps_lo
    lr = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(lr)
    w = torch.clamp(ratio, 1.0 - eps_lo, 1.0 + eps_hi).detach()
    loss_mat = -w * advantages * logprobs.masked_fill(mask == 0, 0.0)
    stats = _base_stats(lr, ratio, mask, ratio.detach() < 1.0 - eps_lo, ratio.detach() > 1.0 + eps_hi)
    return _finish(loss_mat, mask, kw, stats)


@POLICY_LOSSES.register("geo_mean", paper="GMPO, Zhao et al. 2025, arXiv 2507.20673", verl="geo_mean",
                        ratio_levels=("token",), clip_high=True, dual_clip=False, aggs=("seq-mean-token-mean",))
def geo_mean(logprobs, old_logprobs, advantages, mask, **kw):
    """GMPO (veRL compute_policy_loss_geo_mean): the geometric mean of the token ratios, clipped per token in
    log space (sign-aware, as PPO's min), times the sequence's mean advantage.

        lr_t  = log r_t;  c_t = sgn(A) min(sgn(A) lr_t, sgn(A) clip(lr_t, -eps, eps_high))
        rho_i = exp(sum_t m_t c_t / sum_t m_t);  A_i = sum_t m_t A_t / sum_t m_t
        L     = mean_i (-A_i rho_i)        (one loss per completion: loss.agg must be seq-mean-token-mean)
    clip_eps / clip_eps_high are LOG-space ranges here (GMPO's paper: (-0.4, 0.4)). With weights, the
    sequence's factor is the geometric mean of its tokens' weights (veRL).
    """
    import torch

    eps_lo = kw["clip_eps"]
    eps_hi = kw.get("clip_eps_high") or eps_lo
    m = mask.to(logprobs.dtype)
    lr = _log_ratio(logprobs, old_logprobs, mask)
    adv = torch.broadcast_to(advantages, lr.shape)
    sgn = torch.sign(adv)
    clamped = torch.clamp(lr, -eps_lo, eps_hi)
    c = sgn * torch.min(sgn * lr, sgn * clamped)
    n = m.sum(-1).clamp(min=1.0)
    rho = torch.exp((c * m).sum(-1) / n)  # (B,)
    a_seq = (adv * m).sum(-1) / n
    losses = -a_seq * rho
    w = kw.get("weights")
    if w is not None:
        w_tok = torch.broadcast_to(w.detach(), lr.shape)
        losses = losses * torch.exp((torch.log(w_tok + 1e-10) * m).sum(-1) / n)
    loss = losses.mean()
    ratio = torch.exp(lr)
    moved = (lr != clamped).detach()  # veRL pg_clipfrac / _lower: outside the range, split by the sign of A
    stats = _base_stats(lr, ratio, mask, moved & (adv < 0), moved & (adv > 0))
    stats["ratio_mean"] = rho.detach().mean()
    return loss, {k: v.detach() for k, v in stats.items()}


@POLICY_LOSSES.register("sapo", paper="SAPO (Soft Adaptive Policy Optimization), arXiv 2511.20347", verl="sapo", trl="sapo",
                        ratio_levels=("token",), clip_high=False, dual_clip=False, aggs=None)
def sapo(logprobs, old_logprobs, advantages, mask, **kw):
    """l_t = -f(r_t) A_t, f(r) = sigmoid(tau (r - 1)) 4 / tau, tau = tau_pos if A_t > 0 else tau_neg
    (veRL compute_policy_loss_sapo, TRL loss_type=sapo). A soft gate instead of the hard clip: f(1) = 2 / tau,
    f'(1) = 1, so the gradient at r = 1 is PPO's, and it decays smoothly as r leaves 1 (no clip fraction:
    clipfrac stays 0). veRL forces seq-mean-token-mean, TRL aggregates sapo as grpo (the same); here the
    configured loss.agg."""
    import torch

    tau_pos = kw.get("sapo_tau_pos") or SAPO_TAU_POS
    tau_neg = kw.get("sapo_tau_neg") or SAPO_TAU_NEG
    lr = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(lr)
    adv = torch.broadcast_to(advantages, lr.shape)
    tau = torch.where(adv > 0, torch.full_like(lr, tau_pos), torch.full_like(lr, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    none = torch.zeros_like(mask, dtype=torch.bool)
    return _finish(-gate * adv, mask, kw, _base_stats(lr, ratio, mask, none, none))


def _covariance(advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """cov_t = (A_t - mean_m A) (logp_t - mean_m logp) per token (Cui et al. 2025), no gradient; (B, T)."""
    import torch

    from harness.ppo import math as M

    a = torch.broadcast_to(advantages, logprobs.shape).detach()
    lp = logprobs.detach()
    return (a - M.masked_mean(a, mask)) * (lp - M.masked_mean(lp, mask))


@POLICY_LOSSES.register("clip_cov", paper="Clip-Cov, Cui et al. 2025, arXiv 2505.22617", verl="clip_cov",
                        ratio_levels=("token",), clip_high=True, dual_clip=False, aggs=None)
def clip_cov(logprobs, old_logprobs, advantages, mask, **kw):
    """PPO's clipped loss, with the gradient of a few high-covariance tokens cut (veRL compute_policy_loss_clip_cov).

    Among the unclipped masked tokens with lb < cov_t < ub, max(1, int(cov_ratio * n_tokens)) are drawn at
    random (``generator``) and their loss multiplied by 0 (they leave the gradient, not the denominator).
    cov_frac = the share drawn.
    """
    import torch

    from harness.ppo import math as M

    eps_lo = kw["clip_eps"]
    eps_hi = kw.get("clip_eps_high") or eps_lo
    ratio_cov = kw.get("cov_ratio") or COV_RATIO
    lb = kw.get("clip_cov_lb") if kw.get("clip_cov_lb") is not None else CLIP_COV_LB
    ub = kw.get("clip_cov_ub") if kw.get("clip_cov_ub") is not None else CLIP_COV_UB
    lr = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(lr)
    adv = torch.broadcast_to(advantages, lr.shape)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1.0 - eps_lo, 1.0 + eps_hi)
    valid = mask != 0
    clipped = (l2 > l1).detach() & valid
    cov = _covariance(adv, logprobs, mask)
    cand = torch.nonzero(valid & ~clipped & (cov > lb) & (cov < ub))
    n_pick = max(int(ratio_cov * int(valid.sum())), 1)
    gen = kw.get("generator")
    perm = torch.randperm(len(cand), generator=gen, device=gen.device if gen is not None else "cpu")
    pick = cand[perm[: min(n_pick, len(cand))].to(cand.device)]
    corr = torch.ones_like(lr)
    corr[pick[:, 0], pick[:, 1]] = 0.0
    f = ratio.dtype
    stats = _base_stats(lr, ratio, mask, clipped & (adv < 0), clipped & (adv > 0))
    stats["cov_frac"] = M.masked_mean((corr == 0).to(f), mask)
    return _finish(torch.max(l1, l2) * corr, mask, kw, stats)


@POLICY_LOSSES.register("kl_cov", paper="KL-Cov, Cui et al. 2025, arXiv 2505.22617", verl="kl_cov",
                        ratio_levels=("token",), clip_high=False, dual_clip=False, aggs=None)
def kl_cov(logprobs, old_logprobs, advantages, mask, **kw):
    """The unclipped surrogate -A r, plus kl_cov_coef |log r| on the top max(1, int(cov_ratio * n_tokens))
    masked tokens by covariance (veRL compute_policy_loss_kl_cov): a KL penalty on exactly the tokens whose
    updates drive entropy down. No clip (clipfrac 0); cov_frac = the share penalised."""
    import torch

    from harness.ppo import math as M

    ratio_cov = kw.get("cov_ratio") or COV_RATIO
    coef = kw.get("kl_cov_coef") if kw.get("kl_cov_coef") is not None else KL_COV_COEF
    lr = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(lr)
    adv = torch.broadcast_to(advantages, lr.shape)
    valid = mask != 0
    cov = _covariance(adv, logprobs, mask).masked_fill(~valid, float("-inf"))
    n_valid = int(valid.sum())
    k = min(max(1, int(n_valid * ratio_cov)), n_valid)
    top = torch.topk(cov.reshape(-1), k).indices
    sel = torch.zeros(lr.numel(), dtype=torch.bool, device=lr.device)
    sel[top] = True
    sel = sel.view_as(lr) & valid
    loss_mat = -adv * ratio + torch.where(sel, coef * lr.abs(), torch.zeros_like(lr))
    none = torch.zeros_like(valid)
    stats = _base_stats(lr, ratio, mask, none, none)
    stats["cov_frac"] = M.masked_mean(sel.to(ratio.dtype), mask)
    return _finish(loss_mat, mask, kw, stats)

