"""The policy-gradient noise probe: unbiased signal and noise of the policy gradient.

On the on-policy batch (ratio = 1, so the clipped surrogate's gradient is the plain policy
gradient ``-A grad log pi``), split the B completions into K disjoint microbatches of
b = B / K completions, take each one's policy-loss gradient g_k, and compare them.

With g_bar = mean_k g_k and the sample covariance Cov_mb over the K estimates:

    E ||g_bar||^2      = |G|^2 + tr(Cov_mb) / K          (G the true gradient)
    E tr(Cov_mb)       = tr(Sigma) / b                   (Sigma: per-completion covariance)

so ``||g_bar||^2 - tr(Cov_mb) / K`` is an unbiased estimate of |G|^2 and ``b tr(Cov_mb)``
one of tr(Sigma) (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
appendix A). The naive ratio tr(Cov_mb) / ||g_bar||^2 tends to K when noise dominates, which
it does in RLHF: it is never reported. B_simple = tr(Sigma) / |G|^2 is the batch size (in
completions) at which the gradient's noise and signal balance.

The probe draws its microbatch split from a generator of its own: turning it on never
changes the training trajectory. Cost: K forward/backward passes every ``probe.every``
iterations (K = B gives per-completion gradients, the finest resolution).

Aggregations that sum over completions (``loss.agg=token-sum``: no division by the rows) make a
microbatch's gradient a sum of b per-completion gradients, whose covariance grows like b rather
than falling like 1/b. The probe divides such a microbatch gradient by b (``ROW_SUM_AGGS``), so
every aggregation's g_k is a mean over its completions and tr(Sigma) is the per-completion noise,
the same at every K; grad/signal is then |G|^2 of that mean (the update's token-sum gradient over
B completions is B times it; B_simple, a ratio, is unchanged).

Caveat: with ``loss.agg=token-mean`` a microbatch's gradient is a ratio (a sum over tokens
divided by their count), so b * tr(Cov_mb) is tr(Sigma) of that ratio estimator, which
matches the per-completion picture up to the spread of response lengths.
"""

from __future__ import annotations

import torch

from harness.algos import losses as L
from harness.lm.forward import policy_forward
from harness.lm.rollout import Rollout
from harness.schema import PROBE_KEYS

KEYS = PROBE_KEYS  # the keys this probe logs (spelled in harness/schema.py)

# Aggregations whose loss is a sum over the rows handed in (not a mean): the probe rescales by 1 / b.
ROW_SUM_AGGS = frozenset({"token-sum"})

# The probe's generator is seeded from the run seed and this offset, apart from the training one.
PROBE_SEED_OFFSET = 0x9E3779B9


def gradient_stats(grads: torch.Tensor, microbatch_size: int) -> dict[str, float]:
    """Noise and signal of the mean of K gradient estimates, grads (K, D), each over ``microbatch_size`` samples.

    Shape: grads (K, D), K >= 2; one flattened microbatch gradient per row.
    Returns (floats; "unresolved" readings are NaN, never clamped):
      grad/variance        tr(Cov_mb) = sum_d Var_k[g_kd] (unbiased, K - 1): variance of one
                           microbatch (b-sample) estimator, summed over parameters
      grad/signal          ||g_bar||^2 - tr(Cov_mb) / K: unbiased |G|^2; <= 0 when noise swamps it
      grad/rel_variance    tr(Cov_mb) / signal; NaN when signal <= 0
      grad/noise_scale     B_simple = b tr(Cov_mb) / signal, in samples; NaN when signal <= 0
      grad/sample_variance tr(Sigma) = b tr(Cov_mb): the per-sample gradient noise
      grad/batch_variance  tr(Sigma) / (K b): the variance of the whole batch's gradient
      grad/cosine          mean pairwise cosine similarity of the K estimates
      grad/mean_norm       ||g_bar||
    """
    K = grads.shape[0]
    if grads.dim() != 2 or K < 2:
        raise ValueError(f"gradient_stats needs grads of shape (K >= 2, D), got {tuple(grads.shape)}")
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1, got {microbatch_size}")
    b = float(microbatch_size)
    g = grads.double()
    mean = g.mean(0)  # (D,)
    trace = float(g.var(0, unbiased=True).sum())  # tr(Cov_mb)
    norm2 = float(mean.pow(2).sum())  # ||g_bar||^2
    signal = norm2 - trace / K  # E = |G|^2
    unit = g / g.norm(dim=1, keepdim=True).clamp(min=1e-300)  # (K, D)
    cos = unit @ unit.T  # (K, K)
    off = cos[~torch.eye(K, dtype=torch.bool)]
    nan = float("nan")
    return {
        "grad/variance": trace,
        "grad/signal": signal,
        "grad/rel_variance": trace / signal if signal > 0 else nan,
        "grad/noise_scale": b * trace / signal if signal > 0 else nan,
        "grad/sample_variance": b * trace,
        "grad/batch_variance": b * trace / (K * b),
        "grad/cosine": float(off.mean()),
        "grad/mean_norm": norm2**0.5,
    }


def probe_generator(seed: int) -> torch.Generator:
    """The probe's own generator: never the training one (that would move the trajectory)."""
    return torch.Generator().manual_seed((seed + PROBE_SEED_OFFSET) % 2**63)


def probe_gradient_variance(
    policy,
    ro: Rollout,
    advantages: torch.Tensor,
    clip_eps: float,
    agg: str,
    temperature: float,
    microbatches: int,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    gather=None,
    split: torch.Tensor | None = None,
    **loss_options,
) -> dict[str, float]:
    """``gradient_stats`` of the policy loss over ``microbatches`` equal, disjoint parts of the batch.

    ``microbatches`` must divide the batch (the config checks it): unequal parts would make
    the estimates differently distributed and the covariance meaningless. ``mask`` (B, T) is the
    policy loss's mask (None = the rollout's response mask); ``loss_options`` are the rest of
    ``math.policy_loss``'s keyword arguments (ratio level, clip-higher, dual clip, norm length),
    the caller's ``harness.ppo.update.policy_loss_kwargs``, with ppo.loss_mode and its options
    (``loss_mode_kwargs``) and the rollout correction's ``weights`` (B, T) (sliced per microbatch):
    the probe differentiates the update's loss (``harness.algos.losses.policy_loss``).

    Over N ranks, ``ro`` is this rank's share of the batch, ``microbatches`` its share of the K parts (K / N,
    at least 1: N = K makes each rank's gradient of its own share one of the K, as in data-parallel
    training) and ``gather`` stacks the ranks' (K / N, D) gradients into (K, D) in rank order. ``split``:
    the parts' rows, (microbatches, b), instead of a random permutation from ``generator``.
    """
    weights = loss_options.pop("weights", None)
    B = ro.size
    least = 1 if gather is not None else 2
    if microbatches < least or B % microbatches:
        raise ValueError(f"probe.microbatches={microbatches} must be >= 2 and divide the batch of {B}")
    b = B // microbatches
    params = [p for p in policy.parameters() if p.requires_grad]
    perm = split.reshape(-1) if split is not None else torch.randperm(B, generator=generator)
    loss_mask = ro.mask if mask is None else mask
    grads = []
    for idx in perm.view(microbatches, b):
        logp = policy_forward(policy, ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], ro.mask[idx], temperature).logprobs
        w = None if weights is None else weights[idx]
        loss, _ = L.policy_loss(logp, ro.logprobs[idx], advantages[idx], loss_mask[idx], clip_eps, agg, **loss_options,
                                weights=w)
        if agg in ROW_SUM_AGGS:  # a sum over the b completions -> their mean: per-completion noise at every K
            loss = loss / b
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params, strict=True)]))
    stacked = torch.stack(grads)
    return gradient_stats(stacked if gather is None else gather(stacked), b)
