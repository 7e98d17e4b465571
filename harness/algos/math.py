"""Pure tensor functions for PPO in RLHF: masked statistics, KL estimators,
rewards and returns, GAE, loss aggregation, clipped policy / value losses.

Everything here is a pure function of tensors (torch only): no modules, no
optimisers, no config objects, no I/O. Shapes use B = batch (completions),
T = response tokens, V = vocabulary. A ``mask`` is 1 (or True) on real
response tokens and 0 on padding; it may be bool or floating point.

Sources of the tricks, cited again where used:
- TRL ``experimental/ppo/ppo_trainer.py`` (masked mean / var / whiten, approxkl, clipfrac).
- cleanRL ``ppo.py`` (pg_loss1 / pg_loss2, v_loss_clipped, explained variance).
- Huang et al. 2023, "The N implementation details of RLHF with PPO" (whitening, value clipping).
- J. Schulman, "Approximating KL divergence" (2020 note): k1 / k2 / k3 estimators.
- veRL ``trainer/ppo/core_algos.py`` ``agg_loss`` (loss_agg_mode names and semantics).
- Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO: no std division, fixed-length
  normalisation of the token sum).
- Zheng et al. 2025, "Group Sequence Policy Optimization" (GSPO: sequence-level ratio, GSPO-token).
- Yu et al. 2025, DAPO (clip-higher: an upper clip range of its own).
- Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL" (dual clip; veRL ``clip_ratio_c``).
- veRL ``kl_penalty`` with a ``+`` suffix (straight-through KL: the value of k1 / k3, the gradient of k2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.algos.aggregations import AGGREGATIONS
from harness.algos.kl_estimators import KL_ESTIMATORS
from harness.algos.masked import EPS, masked_mean, masked_var, masked_whiten
from harness.algos.ratio_levels import RATIO_LEVELS

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "RATIO_LEVELS",
    "aggregate",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "importance_ratio",
    "kl_penalty",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "missing_eos_score",
    "policy_loss",
    "scale_whiten",
    "sequence_return",
    "sequence_value_targets",
    "token_rewards",
    "value_loss",
]


# --------------------------------------------------------------------------- KL estimators


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    logprobs, ref_logprobs: (B, T) log-probs of the sampled tokens under pi and pi_ref.
    estimator: "k1" | "k2" | "k3" (Schulman, "Approximating KL divergence") or the
    straight-through "k1+" | "k3+" (veRL ``kl_penalty`` / ``kl_loss_type`` with a "+" suffix):
        k1  = log(pi/ref)
        k2  = 0.5 * log(pi/ref)^2
        k3  = ref/pi - 1 - log(ref/pi)
        kX+ = k2 - sg[k2] + sg[kX]        value of kX exactly, gradient of k2
    (sg = stop-gradient). As a loss term k2's gradient is that of the per-token KL(pi || ref) at
    each sampled prefix on on-policy samples (prefixes held fixed: not the sequence KL's gradient,
    Tang and Munos 2025; README "KL: what each combination optimises"); the "+" variants keep that gradient while reporting the lower-variance k3 (or the
    unbiased k1) value. In a reward (no gradient) kX+ is just kX.
    Returns (B, T). No masking: multiply by the response mask before summing.
    k1 is unbiased but can be negative per token; k2 and k3 are >= 0; k3 is unbiased
    with low variance. Unlike veRL we do not clamp k3.
    """
    log_ratio = logprobs - ref_logprobs  # log pi/pi_ref, (B, T)
    return KL_ESTIMATORS[estimator].fn(log_ratio)  # harness.algos.kl_estimators


# --------------------------------------------------------------------------- scores, rewards, returns


def missing_eos_score(scores: Tensor, has_eos: Tensor, penalty: float | None) -> Tensor:
    """The score of a completion that never emitted EOS is REPLACED by a fixed penalty.

    scores: (B,) (or any shape); has_eos: bool, broadcastable to scores; penalty: the fixed
    score, or None to keep every score.
        s_i' = s_i        if completion i emitted EOS
        s_i' = penalty    otherwise           ("The N implementation details" #23)
    Returns scores' shape (``scores`` itself when penalty is None). Unlike TRL's
    ``missing_eos_penalty`` (s_i - p) the penalty does not depend on what the RM said.
    """
    if penalty is None:
        return scores
    return torch.where(has_eos, scores, torch.full_like(scores, penalty))


def token_rewards(kl: Tensor, scores: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards of the token-level MDP: the KL penalty on every token, the score at the end.

    kl: (B, T) per-token KL estimate, already 0 after EOS (``kl_penalty(...) * mask``);
    scores: (B,); mask: (B, T), 1 on a prefix of each row (up to and including EOS); beta: coefficient.
        r_t      = -beta * kl_t             every response token t
        r_{n-1} += score                    n = sum_t mask_t: on EOS, or on the last token without EOS
    (TRL PPOTrainer / N implementation details; TRL itself adds the score one token AFTER EOS.)
    A row with an empty mask gets its score at t = 0. Returns (B, T), a new tensor.
    """
    rewards = -beta * kl  # (B, T)
    last = mask.sum(1).long().clamp(min=1) - 1  # (B,) index of EOS / the last real token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def sequence_return(scores: Tensor, kl: Tensor, beta: float) -> Tensor:
    """The return of one completion as ONE action (the bandit view, Ahmadian et al. 2024).

    scores: (B,); kl: (B, T) per-token KL estimate, 0 after EOS; beta: coefficient.
        R_i = score_i - beta * sum_t kl_it
    Returns (B,).
    """
    return scores - beta * kl.sum(1)


def sequence_value_targets(returns: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Value targets of the sequence level: V regresses R from the prompt state only.

    returns: (B,) sequence returns R; mask: (B, T) response mask.
    One action per completion means one state with a value, the prompt (before the first
    response token): the baseline A_i = R_i - V(x_i) reads V there, so only there is V trained.
        targets_it = R_i * mask_it          (B, T), R broadcast over the response
        vmask_it   = 1 if t = 0 else 0      (B, T), the value loss's mask
    Returns (targets, vmask).
    """
    targets = returns[:, None] * mask
    vmask = torch.zeros_like(mask)
    vmask[:, 0] = 1.0
    return targets, vmask


# --------------------------------------------------------------------------- advantages


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over response tokens (Schulman et al. 2016).

    rewards, values, mask: (B, T). mask is 1 on real response tokens, a prefix of each
    row (up to and including EOS), 0 after; the state after the last real token is
    terminal, so its value is taken as 0 (whatever ``values`` holds there).
    Returns (advantages, returns), both (B, T), zero where mask is 0;
    returns = advantages + values. Vectorised over B, one reverse loop over T.
    Call under torch.no_grad() (or pass detached tensors) in a PPO loop.
    """
    m = mask.to(values.dtype)
    B, T = values.shape
    zero = values.new_zeros(B)
    next_value, next_adv = zero, zero  # V(s_T) = 0, A_T = 0: terminal after the last column
    advs_reversed = []
    for t in reversed(range(T)):
        # delta_t = r_t + gamma * V(s_{t+1}) * m_{t+1} - V(s_t)      (TRL PPOTrainer, cleanRL)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # A_t = delta_t + gamma * lam * A_{t+1}; zeroed on padding so it cannot leak backwards
        adv_t = (delta + gamma * lam * next_adv) * m[:, t]
        advs_reversed.append(adv_t)
        next_value, next_adv = values[:, t] * m[:, t], adv_t
    advantages = torch.stack(advs_reversed[::-1], dim=1)  # (B, T)
    returns = (advantages + values) * m  # R_t = A_t + V(s_t)    (TRL: returns = advantages + values)
    return advantages, returns


def scale_whiten(x: Tensor) -> Tensor:
    """Divide sequence advantages by their std: whitening of the SCALE only, no centring.

    x: (B,) sequence advantages. Returns x / (std(x) + 1e-8), std the unbiased (n - 1) std.
    The mean is kept on purpose: the baseline (``harness.algos.estimators.BASELINES``) already decided what
    is subtracted, and centring here would quietly turn baseline "none" into "batch_mean"
    (and shift RLOO / group baselines by the batch mean). Only the step size is normalised.
    """
    return x / (x.std() + EPS)


# --------------------------------------------------------------------------- losses


def aggregate(loss_mat: Tensor, mask: Tensor, agg: str, norm_length: int | None = None) -> Tensor:
    """Reduce a per-token loss matrix to a scalar (veRL ``agg_loss`` / loss_agg_mode names).

    loss_mat, mask: (B, T); B is the rows handed in (one optimiser minibatch in the update).
    agg:
      "token-mean"               sum_{b,t} l*m / sum_{b,t} m            (every token weighs the same)
      "seq-mean-token-mean"      (1/B) sum_b [ sum_t l*m / sum_t m ]    (every sequence weighs the same)
      "seq-mean-token-sum"       (1/B) sum_b sum_t l*m                  (no length normalisation)
      "token-sum"                sum_{b,t} l*m                          (no normalisation at all)
      "seq-mean-token-sum-norm"  (1/(B L)) sum_{b,t} l*m,  L = norm_length (Dr. GRPO's fixed
                                 MAX_TOKENS), or T = mask.shape[-1] when None (veRL's default)
    norm_length is read by "seq-mean-token-sum-norm" only.

    What the references compute, per backward and per optimiser step:
    - veRL (dp_actor) calls agg_loss once per MICRO-batch of b rows and multiplies the result by
      its gradient-accumulation factor 1 / n_micro (b / B_mini with dynamic batch sizes) before
      backward, so one optimiser step's gradient is that of (1/n) sum_micro agg(micro).
      Its legacy agg_loss (<= 0.4) computes seq-mean-token-sum-norm as sum_{b,t} l*m / T per
      micro-batch (no 1/b): per step sum_{B_mini rows} / (n T) = b x the Dr. GRPO value, so the
      step size scales with the micro-batch size. Its current agg_loss divides by the batch
      (seq_denominator = local bsz or global_batch_size) and by loss_scale_factor (default T):
      per step sum / (B_mini T), the value here. token-sum there is the micro-batch's sum times
      1/n: per step sum_{B_mini rows} / n_micro; here the minibatch's sum (veRL with n_micro = 1).
    - TRL 1.12 GRPOTrainer loss_type="dr_grpo": sum_{b,t} l*m / (b * max_completion_length) per
      device batch of b rows, divided by the gradient-accumulation steps: per optimiser step
      sum / (B * max_completion_length) over its B rows, the value here with L =
      max_completion_length (``loss.norm_length`` null = the run's response length).
    - Here: one call per optimiser minibatch (no micro-batching), so the value above is the
      step's loss exactly.
    The seq-mean modes divide by B, all rows; a row with an empty mask contributes 0
    (veRL would give NaN for seq-mean-token-mean there).
    Returns a 0-dim tensor.
    """
    return AGGREGATIONS[agg].fn(loss_mat, mask, norm_length)  # harness.algos.aggregations


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """The importance ratio each token's surrogate uses, at token or sequence level.

    logprobs: (B, T) current policy (with grad); old_logprobs: (B, T) rollout policy; mask: (B, T).
    level:
      "token"           r_it = exp(logp_it - old_it)                       (PPO)
      "sequence"        s_i  = exp( sum_t m_it (logp_it - old_it) / sum_t m_it )   (GSPO, Zheng
                        et al. 2025: the geometric mean of the token ratios, length-normalised),
                        the same s_i on every token of completion i; its gradient reaches every
                        token of i through the mean (TRL importance_sampling_level="sequence")
      "sequence-token"  s_it = sg[s_i] * pi_it / sg[pi_it] = exp(sg[log s_i] + logp_it - sg[logp_it])
                        (GSPO-token; veRL policy_loss "gspo"): the value of s_i, the gradient of
                        log pi_it on token t alone, scaled by s_i
    Padded positions get log-ratio 0 (ratio 1 at token level); an empty row gets s_i = 1.
    Unlike veRL we do not clamp the log-ratio. Returns (B, T).
    """
    return RATIO_LEVELS[level].fn(logprobs, old_logprobs, mask)  # harness.algos.ratio_levels


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg: str,
    *,
    ratio_level: str = "token",
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    norm_length: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate, as a loss to MINIMISE (Schulman et al. 2017; cleanRL naming).

    logprobs: (B, T) log-probs of the taken tokens under the current policy (with grad).
    old_logprobs: (B, T) the same under the rollout policy (no grad).
    advantages: (B, T), or (B, 1) for sequence-level advantages (broadcast).
    mask: (B, T). clip_eps: the lower clip range eps_low. agg, norm_length: see ``aggregate``.
    ratio_level: see ``importance_ratio`` (r below is r_it, s_i or s_it).
    clip_eps_high: the upper clip range eps_high (DAPO clip-higher); None = clip_eps.
    dual_clip: c > 1 (Ye et al. 2020; veRL clip_ratio_c); None = off.
        l_t = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))         (cleanRL pg_loss1 / pg_loss2)
        l_t = min(l_t, -c A)      where A < 0, when dual_clip is set    (veRL compute_policy_loss)
    weights: (B, T) or (B, 1) per-token factors of the loss (the rollout-correction importance weights,
    ``harness.algos.offpolicy``; no gradient), applied before aggregation; None = 1.
    The defaults are today's symmetric token-level PPO loss, bit for bit.
    Returns (loss, stats); stats are detached 0-dim tensors, shares of the masked tokens:
      "approxkl"      0.5 * masked_mean((logp - old)^2)   (TRL; token-level k2 of new vs old)
      "clipfrac"      masked_mean(pg_loss2 > pg_loss1)    (TRL / cleanRL: the clipped term taken)
      "clipfrac_low"  masked_mean(r < 1 - eps_low  and A < 0)   (TRL GRPO clip_ratio/low_mean)
      "clipfrac_high" masked_mean(r > 1 + eps_high and A > 0)   (clip_ratio/high_mean);
                      clipfrac = clipfrac_low + clipfrac_high
      "dualclip_frac" masked_mean(A < 0 and max(pg_loss1, pg_loss2) > -c A), only with dual_clip
                      (veRL pg_clipfrac_lower: a share of ALL masked tokens, not of those with A < 0)
      "ratio_mean"    masked_mean(r)
    At sequence level a completion's share is its token count (its s_i sits on every token).
    Padded positions get log-ratio 0 (TRL fills them with INVALID_LOGPROB for the same
    reason), so a non-finite logprob there cannot put NaN into the loss or its gradient.
    """
    valid = mask != 0
    log_ratio = (logprobs - old_logprobs).masked_fill(~valid, 0.0)  # (B, T)
    ratio = importance_ratio(logprobs, old_logprobs, mask, ratio_level)  # r_t = pi / pi_old (or s_i)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    # L = max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))      (cleanRL pg_loss1 / pg_loss2)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    pg_losses = torch.max(pg_loss1, pg_loss2)  # (B, T)
    clipped = pg_losses
    if dual_clip is not None:
        if not dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        # for A < 0 the loss is bounded by -c A (veRL: torch.where(A < 0, min(-c A, L), L))
        pg_losses = torch.where(advantages < 0, torch.min(pg_losses, -advantages * dual_clip), pg_losses)
    if weights is not None:
        pg_losses = pg_losses * weights.detach()
    loss = aggregate(pg_losses, mask, agg, norm_length)
    with torch.no_grad():
        f = ratio.dtype
        stats = {
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),  # TRL approxkl
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(f), mask),
            "clipfrac_low": masked_mean(((ratio < 1.0 - clip_eps) & (advantages < 0)).to(f), mask),
            "clipfrac_high": masked_mean(((ratio > 1.0 + eps_high) & (advantages > 0)).to(f), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
        if dual_clip is not None:
            stats["dualclip_frac"] = masked_mean(((advantages < 0) & (clipped > -advantages * dual_clip)).to(f), mask)
    return loss, {k: v.detach() for k, v in stats.items()}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None,
    agg: str,
    norm_length: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (cleanRL v_loss_clipped; "The N implementation details of RLHF with PPO").

    values: (B, T) current predictions (with grad); old_values: (B, T) rollout predictions;
    returns: (B, T) targets; mask: (B, T). clip: max change of V from old_values, or None
    for the plain squared error. agg, norm_length: see ``aggregate``.
    Returns (loss, stats); stats are detached 0-dim tensors:
      "clipfrac"   masked_mean(v_loss_clipped > v_loss_unclipped)   (TRL vf_clipfrac)
      "value_mean" masked_mean(values)
    """
    v_loss_unclipped = (values - returns) ** 2  # (B, T)
    if clip is None:
        v_loss_max = v_loss_unclipped
        clipfrac = values.new_zeros(())
    else:
        if clip < 0:
            raise ValueError(f"value clip must be >= 0 or None, got {clip}")
        # V_clipped = V_old + clip(V - V_old, -c, c);  L = 0.5 * max((V - R)^2, (V_clipped - R)^2)
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
        clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).to(values.dtype), mask)
    loss = 0.5 * aggregate(v_loss_max, mask, agg, norm_length)
    stats = {"clipfrac": clipfrac.detach(), "value_mean": masked_mean(values.detach(), mask)}
    return loss, stats


# --------------------------------------------------------------------------- diagnostics


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) along the last dim.

    logits: (B, T, V) (any leading shape). Returns (B, T).
    Computed in the logits' dtype (upcast bf16 logits first if you need precision).
    """
    # H = logsumexp(z) - sum_v softmax(z)_v * z_v   (TRL / veRL entropy_from_logits), with
    # z = logits - max(logits): H is shift-invariant and the shift keeps lse - E[z] from
    # cancelling catastrophically for large logits. The max is detached (gradient unchanged).
    z = logits - logits.amax(dim=-1, keepdim=True).detach()
    p = torch.softmax(z, dim=-1)
    # -inf logits (masked vocabulary) have p = 0; use z = 0 there so 0 * -inf is never formed
    z_safe = torch.where(p > 0, z, torch.zeros((), dtype=z.dtype, device=z.device))
    return torch.logsumexp(z, dim=-1) - (p * z_safe).sum(dim=-1)


def low_reward_length(lengths: Tensor, gold: Tensor) -> float:
    """Mean of ``lengths`` (B,) over the completions whose ``gold`` (B,) is below the batch's mean gold:
    the length of the low-reward responses (Liu et al. 2025, "Understanding R1-Zero-Like Training", whose
    length bias shows as incorrect responses growing longer; with a right / wrong gold these are the wrong
    ones). NaN when no completion is below the mean (every gold equal)."""
    low = gold < gold.float().mean()
    if not bool(low.any()):
        return float("nan")
    return float(lengths[low].float().mean())


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Fraction of the variance of the returns that the value predictions explain.

    values, returns, mask: (B, T). Returns a detached 0-dim tensor:
    1 is perfect, 0 is no better than a constant, negative is worse. NaN when the masked
    returns have zero variance (or the mask is empty): the ratio is undefined (as cleanRL).
    """
    # ev = 1 - Var[R - V] / Var[R]     (cleanRL explained_var; biased variances, ratio unchanged)
    with torch.no_grad():
        var_r = masked_var(returns, mask, unbiased=False)
        var_res = masked_var(returns - values, mask, unbiased=False)
        nan = torch.full_like(var_r, float("nan"))
        return torch.where(var_r == 0, nan, 1.0 - var_res / var_r)
